"""Every DAG the factory makes imports cleanly and is wired as DESIGN.md says."""

from __future__ import annotations

import pytest

from tasks.spec import all_specs
from tasks.steps import ORDER

pytest.importorskip("airflow")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_one_dag_per_spec_with_all_stages_in_order(dagbag, spec):
    dag = dagbag.dags.get(f"leptonflow_{spec.name}")
    assert dag is not None
    assert dag.max_active_runs > 1
    # a straight chain validate_raw -> ... -> publish
    for upstream, downstream in zip(ORDER, ORDER[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert set(dag.task_ids) == set(ORDER)
    assert dag.get_task("train").pool == "gpu"
    assert dag.get_task("publish").outlets, "publish must emit an Asset event"


def test_params_are_typed_documented_and_grouped(dagbag):
    dag = dagbag.dags["leptonflow_events"]
    for name, param in dag.params.items():
        schema = param.schema
        assert "type" in schema, name
        assert param.description, name
        assert schema.get("section"), name
    # bad values are refused by the schema
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict({k: v for k, v in dag.params.items()})
    params.validate()  # the defaults are valid
    with pytest.raises(ParamValidationError, match="not one of"):
        params["validation_policy"] = "explode"
    with pytest.raises(ParamValidationError, match="minimum"):
        params["epochs"] = 0


# ---- a broken spec beside events.yaml: events keeps its DAG, the broken file is named in an import error ------
SPEC_ERRORS_FILE = "leptonflow_spec_errors.py"
TYPO = "columns.price.on_out_of_range: 'rejct' is not one of reject, clip (did you mean 'reject'?)"


@pytest.fixture
def specs_folder(tmp_path):
    """events.yaml as shipped, beside shop.yaml whose price rule has a typo."""
    import yaml

    from tasks.spec import SPEC_DIR

    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "events.yaml").write_text((SPEC_DIR / "events.yaml").read_text())
    raw = yaml.safe_load((SPEC_DIR / "events.yaml").read_text())
    raw["name"] = "shop"
    raw["columns"]["price"]["on_out_of_range"] = "rejct"
    (folder / "shop.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def test_broken_spec_is_an_import_error_naming_it_and_events_still_imports(specs_folder, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    monkeypatch.setenv("LEPTONFLOW_SPECS", str(specs_folder))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert sorted(bag.dags) == ["leptonflow_events"]
    assert set(bag.dags["leptonflow_events"].task_ids) == set(ORDER)
    assert list(bag.import_errors) == [str(REPO / "dags" / SPEC_ERRORS_FILE)]  # not the pipeline file
    assert f"{specs_folder / 'shop.yaml'}: {TYPO}" in bag.import_errors[str(REPO / "dags" / SPEC_ERRORS_FILE)]


def test_metadata_db_keeps_events_scheduled_and_lists_the_import_error(specs_folder, tmp_path):
    """Real Airflow CLI and metadata DB: parsing stores the error and leaves leptonflow_events active
    (an import error on the pipeline file itself would mark its DAGs stale); fixing the spec clears it."""
    import json
    import sqlite3

    from leptonflow_airflow.stack import AirflowStack

    stack = AirflowStack(home=tmp_path / "airflow", lf_home=tmp_path / "lf",
                         extra_env={"LEPTONFLOW_SPECS": str(specs_folder)})
    stack.cli("db", "migrate")

    def parse() -> tuple[list[dict], list[tuple]]:
        stack.cli("dags", "reserialize")
        out = stack.cli("dags", "list-import-errors", "--output", "json", check=False)  # exit 1: errors listed
        errors = json.loads(next(line for line in out.splitlines() if line.startswith("[")))
        with sqlite3.connect(stack.home / "airflow.db") as db:
            dags = db.execute("SELECT dag_id, is_stale, has_import_errors FROM dag ORDER BY dag_id").fetchall()
        return errors, dags

    errors, dags = parse()
    assert [e["filepath"] for e in errors] == [SPEC_ERRORS_FILE]
    assert f"{specs_folder / 'shop.yaml'}: {TYPO}" in errors[0]["error"]
    assert dags == [("leptonflow_events", 0, 0)]

    fixed = (specs_folder / "shop.yaml").read_text().replace("on_out_of_range: rejct", "on_out_of_range: reject")
    (specs_folder / "shop.yaml").write_text(fixed)
    errors, dags = parse()
    assert errors == []
    assert dags == [("leptonflow_events", 0, 0), ("leptonflow_shop", 0, 0)]
