from __future__ import annotations

import pickle

import pytest
import yaml

from tasks import spec as spec_module
from tasks.errors import LeptonflowError
from tasks.spec import (
    DERIVED_OPS,
    SPEC_DIR,
    SpecError,
    SpecProblem,
    all_specs,
    load_spec,
    parse_spec,
    scan_specs,
    spec_for,
)


def test_events_spec_parses_with_its_rules():
    spec = spec_for("events")
    assert spec.key == ("event_id",)
    assert spec.group_column == "user_id"
    assert set(spec.pii_columns) == {"user_id", "email"}
    assert spec.column("price").on_out_of_range == "reject"
    assert spec.column("quantity").on_out_of_range == "clip"
    assert spec.column("device").on_unknown == "map"
    assert "hour" in spec.features.derived
    assert spec.arrow_schema().field("event_ts").type.tz == "UTC"
    assert [s.name for s in all_specs()] == ["events"]


def test_fingerprint_changes_with_content(tmp_path):
    raw = yaml.safe_load((SPEC_DIR / "events.yaml").read_text())
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["columns"]["price"]["max"] = 5.0
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_spec(a).fingerprint() != load_spec(b).fingerprint()
    assert load_spec(a).fingerprint() == spec_for("events").fingerprint()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["columns"]["price"].update(type="money"), "columns.price.type: 'money' is not one of"),
        (lambda r: r.pop("key"), "key: is required"),
        (lambda r: r.update(group_column="nobody"), "unknown column 'nobody'"),
        (lambda r: r["split"].update(train=0.9), "split ratios sum to"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, mutate, message):
    raw = yaml.safe_load((SPEC_DIR / "events.yaml").read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


# ---- the strict schema: each typo of issue 22 is an error naming the file and the field ----------------------
def _events() -> dict:
    return yaml.safe_load((SPEC_DIR / "events.yaml").read_text())


def _write(folder, raw: dict, name: str = "shop.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _shop(**top) -> dict:
    raw = _events()
    raw.update(name="shop", **top)
    return raw


TYPOS = [
    # (what the user wrote, field path, the error's words)
    (lambda r: r["columns"]["price"].update(on_out_of_range="rejct"), "columns.price.on_out_of_range",
     "'rejct' is not one of reject, clip (did you mean 'reject'?)"),
    (lambda r: r["columns"]["device"].update(allowed="desktop"), "columns.device.allowed",
     "must be a list of values, got 'desktop' (write [desktop])"),
    (lambda r: r["columns"]["email"].update(required="no"), "columns.email.required",
     "must be true or false, got 'no'"),
    (lambda r: r.update(dedupe_ordr=r.pop("dedupe_order")), "dedupe_ordr",
     "unknown field (did you mean 'dedupe_order'?)"),
    (lambda r: r["features"].update(numerc=r["features"].pop("numeric")), "features.numerc",
     "unknown field (did you mean 'numeric'?)"),
    (lambda r: r["columns"]["price"].update(min="abc"), "columns.price.min", "must be a number, got 'abc'"),
    (lambda r: r["columns"]["price"].update(min=20000.0), "columns.price.min",
     "min 20000.0 is greater than max 10000.0"),
    (lambda r: r["split"].update(train=0.9, val=0.2, test=-0.1), "split.test", "must be >= 0, got -0.1"),
    (lambda r: r["label"].update(task="clasification"), "label.task",
     "'clasification' is not one of classification, regression (did you mean 'classification'?)"),
    # was `TypeError: can only concatenate str (not "float") to str`, naming neither file nor field
    (lambda r: r["split"].update(train="0.8"), "split.train", "must be a number, got '0.8'"),
    (lambda r: r.update(name="../../../x"), "name", "'../../../x' is not a valid dataset name"),
    (lambda r: r["columns"]["price"].update(requird=True), "columns.price.requird",
     "unknown field (did you mean 'required'?)"),
    (lambda r: r["columns"]["price"].update(max="1e4"), "columns.price.max", "YAML read it as text"),
    (lambda r: r["columns"]["quantity"].update(min=0.5), "columns.quantity.min", "must be an integer, got 0.5"),
    (lambda r: r["columns"]["event_ts"].update(min=0), "columns.event_ts.min",
     "range rules apply to int and float columns only"),
    (lambda r: r["columns"]["country"]["allowed"].append(False), "columns.country.allowed[8]",
     "got false (a boolean) (YAML reads yes/no/on/off/NO as booleans: quote the value)"),
    (lambda r: r["columns"]["device"].update(allowed=["Desktop", "mobile"]), "columns.device.allowed[0]",
     "'Desktop' can never match: values are normalized to lower case"),
    (lambda r: r["columns"]["price"].update(normalize="lower"), "columns.price.normalize",
     "applies to string and category columns only"),
    (lambda r: r.update(group_column="user_idd"), "group_column",
     "refers to unknown column 'user_idd' (did you mean 'user_id'?)"),
    (lambda r: r["label"].update(column="purchasd"), "label.column",
     "refers to unknown column 'purchasd' (did you mean 'purchased'?)"),
    (lambda r: r.update(key=["event_id", "evnt_id"]), "key[1]", "refers to unknown column 'evnt_id'"),
    (lambda r: r.update(key="event_id"), "key", "must be a list, got the string 'event_id' (write [event_id])"),
    (lambda r: r.update(dedupe_order=["nope"]), "dedupe_order[0]", "refers to unknown column 'nope'"),
    (lambda r: r.update(time_column="price"), "time_column", "the time column must be a timestamp"),
    (lambda r: r["features"]["categorical"].append("event_ts"), "features.categorical[4]",
     "categorical feature 'event_ts' is a timestamp column"),
    (lambda r: r["features"]["numeric"].append("purchased"), "features", "the label column 'purchased' is also a"),
    (lambda r: r["features"]["derived"]["hour"].update(op="hours"), "features.derived.hour.op",
     "'hours' is not one of hour, day_of_week, day, month, minute, log1p (did you mean 'hour'?)"),
    (lambda r: r["features"]["derived"]["hour"].update({"from": "price"}), "features.derived.hour.op",
     "'hour' needs a timestamp column; 'price' is float"),
    (lambda r: r.update(schedule="daily"), "schedule", "is not a cron expression or preset"),
    (lambda r: r.update(start_date="2026-13-01"), "start_date", "is not a date"),
    (lambda r: r["anomaly"].update(contamination=0.9), "anomaly.contamination", "must be <= 0.5, got 0.9"),
    (lambda r: r["drift"].update(psi_mx=0.2), "drift.psi_mx", "unknown field (did you mean 'psi_max'?)"),
    (lambda r: r.update(row_count={"min": 10, "max": 5}), "row_count.min", "min 10 is greater than max 5"),
    (lambda r: r["columns"].update(price="float"), "columns.price", "(write price: {type: float})"),
]


@pytest.mark.parametrize("mutate, field, words", TYPOS, ids=[t[1] for t in TYPOS])
def test_each_typo_is_a_spec_error_naming_file_and_field(tmp_path, mutate, field, words):
    raw = _shop()
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert isinstance(err.value, LeptonflowError)
    assert f"{path}: {field}: " in str(err.value), str(err.value)
    assert words in str(err.value)
    assert field in err.value.fields


def test_every_problem_is_listed_at_once_without_follow_up_noise(tmp_path):
    raw = _shop()
    raw["columns"]["price"].update(on_out_of_range="rejct", min="abc")
    raw["label"]["task"] = "clasification"
    raw["dedupe_ordr"] = raw.pop("dedupe_order")
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    # price has its own problems: the features that name it do not add "unknown column 'price'"
    assert sorted(err.value.fields) == ["columns.price.min", "columns.price.on_out_of_range", "dedupe_ordr",
                                        "label.task"]
    assert len(str(err.value).splitlines()) == 4


def test_yaml_level_mistakes_name_the_file_and_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text((SPEC_DIR / "events.yaml").read_text().replace("name: events", "name: dup\nname: other"))
    with pytest.raises(SpecError, match=rf"{dup}: not valid YAML: line \d+, column 1: duplicate key 'name'"):
        load_spec(dup)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncolumns: {a: {type: string}\n")
    with pytest.raises(SpecError, match=rf"{broken}: not valid YAML: line 3"):
        load_spec(broken)
    with pytest.raises(SpecError, match="must be a mapping at top level"):
        parse_spec(["a", "list"], "list.yaml")


def test_spec_error_pickles_with_its_problems():
    err = SpecError("a.yaml", [SpecProblem("split.train", "must be a number")])
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "a.yaml: split.train: must be a number"
    assert back.fields == ["split.train"]
    both = SpecError.combine([err, SpecError("b.yaml", "not valid YAML")], source="specs/")
    assert str(both).splitlines() == ["a.yaml: split.train: must be a number", "b.yaml: not valid YAML"]


def test_the_schema_mirrors_what_the_steps_implement():
    from tasks import params
    from tasks.prep import features

    assert set(DERIVED_OPS) == set(features._TIME_OPS) | {"log1p"}
    for s in params.SETTINGS:  # bounds of the spec sections that give settings their defaults
        if s.spec_default:
            section, _, key = s.spec_default.partition(".")
            lo, hi, lo_open, _ = spec_module._SECTIONS[section][key]
            assert (lo, hi, lo_open) == (s.minimum, s.maximum, s.exclusive_minimum), s.name


def test_events_spec_content_is_unchanged_by_the_strict_loader():
    # The fingerprint is part of every cache key: a loader that read events.yaml differently would
    # silently invalidate (or worse, alias) every committed output. Update only on purpose.
    assert spec_for("events").fingerprint() == "77347750b7caa6f7"


# ---- one bad spec hides nothing -------------------------------------------------------------------------------
@pytest.fixture
def specs_with_a_broken_one(tmp_path):
    """A specs folder: events.yaml as shipped, beside shop.yaml with a typo."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "events.yaml").write_text((SPEC_DIR / "events.yaml").read_text())
    raw = _shop()
    raw["columns"]["price"]["on_out_of_range"] = "rejct"
    _write(folder, raw)
    (folder / "zzz.yaml").write_text("name: zzz\ncolumns: [oops\n")
    return folder


def test_a_broken_spec_hides_no_other_spec(specs_with_a_broken_one):
    folder = specs_with_a_broken_one
    scan = scan_specs(folder)
    assert [s.name for s in scan.specs] == ["events"]
    assert [e.source for e in scan.errors] == [str(folder / "shop.yaml"), str(folder / "zzz.yaml")]
    assert scan.errors[0].fields == ["columns.price.on_out_of_range"]
    assert [s.name for s in all_specs(folder)] == ["events"]
    assert spec_for("events", folder).fingerprint() == spec_for("events").fingerprint()
    with pytest.raises(SpecError, match=r"shop\.yaml: columns\.price\.on_out_of_range: 'rejct'"):
        spec_for("shop", folder)
    with pytest.raises(SpecError, match=r"zzz\.yaml: not valid YAML"):  # found by its file name
        spec_for("zzz", folder)
    with pytest.raises(SpecError, match=r"no dataset spec named 'evnts' \(did you mean 'events'\?\)"):
        spec_for("evnts", folder)
    with pytest.raises(SpecError, match="not a valid dataset name"):
        spec_for("../../../x", folder)


def test_a_second_file_declaring_a_dataset_is_an_error_and_the_first_stays(specs_with_a_broken_one):
    folder = specs_with_a_broken_one
    (folder / "events_copy.yaml").write_text((SPEC_DIR / "events.yaml").read_text())
    scan = scan_specs(folder)
    assert [s.source for s in scan.specs] == [str(folder / "events.yaml")]
    dupe = [e for e in scan.errors if e.source.endswith("events_copy.yaml")][0]
    assert f"name: dataset 'events' is already declared by {folder / 'events.yaml'}" in str(dupe)
    assert spec_for("events", folder).source == str(folder / "events.yaml")


def test_steps_read_the_specs_folder_setting(specs_with_a_broken_one, lf_home, monkeypatch):
    from tasks.context import Settings, StepContext

    monkeypatch.setenv("LEPTONFLOW_SPECS", str(specs_with_a_broken_one))
    assert Settings.from_env().specs_dir == specs_with_a_broken_one
    assert Settings.from_env({}).specs_dir == SPEC_DIR
    ctx = StepContext(dataset="events", ds="2026-11-01")
    assert ctx.spec.source == str(specs_with_a_broken_one / "events.yaml")
    with pytest.raises(SpecError, match="columns.price.on_out_of_range"):
        _ = StepContext(dataset="shop", ds="2026-11-01").spec


def test_spec_check_cli(specs_with_a_broken_one, monkeypatch, capsys):
    from tasks.__main__ import main

    monkeypatch.setenv("LEPTONFLOW_SPECS", str(specs_with_a_broken_one))
    assert main(["spec", "check", "events"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {specs_with_a_broken_one / 'events.yaml'}: dataset events")
    assert main(["spec", "check", "shop"]) == 1
    out = capsys.readouterr().out
    assert f"{specs_with_a_broken_one / 'shop.yaml'}: columns.price.on_out_of_range: 'rejct' is not one of " \
           "reject, clip (did you mean 'reject'?)" in out
    assert main(["spec", "check"]) == 1  # the whole folder: one OK, two FAILED
    out = capsys.readouterr().out
    assert (out.count("\nOK ") + out.startswith("OK "), out.count("FAILED ")) == (1, 2)
    raw = _shop()
    raw["split"]["train"] = "0.8"
    path = _write(specs_with_a_broken_one.parent, raw, "draft.yaml")
    assert main(["spec", "check", str(path)]) == 1  # a file outside the folder, by path
    assert f"{path}: split.train: must be a number, got '0.8'" in capsys.readouterr().out
