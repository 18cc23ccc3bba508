from __future__ import annotations

import pytest
import yaml

from tasks.spec import SPEC_DIR, SpecError, all_specs, load_spec, spec_for


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
        (lambda r: r["columns"]["price"].update(type="money"), "column 'price' has type 'money'"),
        (lambda r: r.pop("key"), "missing required field 'key'"),
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
