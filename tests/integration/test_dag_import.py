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
