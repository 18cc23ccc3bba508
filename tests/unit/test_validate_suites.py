"""Suites: stored JSON == generated from spec + overrides; overrides merge; drift maths."""

from __future__ import annotations

import json

import great_expectations as gx
import numpy as np
import pytest

from tasks.spec import parse_spec, spec_for
from tasks.validation import drift, suites
from tasks.validation.engine import SUPPORTED, SuiteNotSupported, resolve


@pytest.mark.parametrize("kind", ["raw", "clean"])
def test_stored_suite_equals_generated(kind):
    spec = spec_for("events")
    want = suites.generate_suite(spec, kind, suites.load_overrides("events"))
    stored = suites.load_suite("events", kind)
    assert stored == json.loads(suites.dumps(want)), "regenerate: python -m tasks.validation.suites --dataset events"
    # a real GX suite, and every expectation type is one the distributed engine evaluates
    suite = gx.ExpectationSuite(**{k: v for k, v in stored.items() if k != "meta"})
    assert len(suite.expectations) == len(stored["expectations"])
    assert {e["type"] for e in stored["expectations"]} <= SUPPORTED


def test_generated_rules_follow_the_spec():
    spec = spec_for("events")
    raw = suites.generate_suite(spec, "raw", {"raw": {"mostly": 0.9}})
    clean = suites.generate_suite(spec, "clean")
    by = lambda doc, t: {e["kwargs"].get("column"): e["kwargs"] for e in doc["expectations"] if e["type"] == t}  # noqa: E731
    # raw: loose, with mostly; reject-range columns only (clip columns are repaired by clean)
    assert set(by(raw, "expect_column_values_to_be_between")) == {"price", "event_ts"}
    assert by(raw, "expect_column_values_to_not_be_null")["user_id"]["mostly"] == 0.9
    assert by(raw, "expect_column_values_to_be_in_set").keys() == {"event_type"}
    # clean: strict, mapped columns allow the unknown value, exact types, unique key, drift thresholds
    between = by(clean, "expect_column_values_to_be_between")
    assert between["quantity"] == {"column": "quantity", "min_value": 1.0, "max_value": 20.0}
    assert "__unknown__" in by(clean, "expect_column_values_to_be_in_set")["device"]["value_set"]
    assert by(clean, "expect_column_values_to_be_of_type")["event_ts"]["type_"] == "timestamp[us, tz=UTC]"
    assert "event_id" in by(clean, "expect_column_values_to_be_unique")
    assert by(clean, "expect_column_psi_to_be_below")["price"]["threshold"] == 0.25
    assert set(by(clean, "expect_column_category_share_delta_to_be_below")) == {
        "event_type",
        "category",
        "device",
        "country",
    }


def test_overrides_drop_set_add():
    spec = spec_for("events")
    ov = {
        "clean": {
            "drop": [{"type": "expect_column_psi_to_be_below", "column": "price"}],
            "set": [{"type": "expect_column_values_to_be_between", "column": "price", "kwargs": {"max_value": 500}}],
            "add": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "email", "mostly": 0.5}}],
        }
    }
    doc = suites.generate_suite(spec, "clean", ov)
    types = [(e["type"], e["kwargs"].get("column")) for e in doc["expectations"]]
    assert ("expect_column_psi_to_be_below", "price") not in types
    assert types[-1] == ("expect_column_values_to_not_be_null", "email")
    price = [
        e
        for e in doc["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "price"
    ][0]
    assert price["kwargs"]["max_value"] == 500
    with pytest.raises(suites.SuiteError, match="matches no expectation"):
        suites.generate_suite(spec, "clean", {"clean": {"set": [{"type": "expect_nothing", "kwargs": {}}]}})
    with pytest.raises(suites.SuiteError, match="'expect_column_to_be_shiny' is not evaluated"):
        suites.generate_suite(spec, "clean", {"clean": {"add": [{"type": "expect_column_to_be_shiny", "kwargs": {}}]}})
    bad = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "price", "mostly": 7}}
    with pytest.raises(suites.SuiteError, match="invalid expect_column_values_to_be_between"):
        suites.generate_suite(spec, "clean", {"clean": {"add": [bad]}})


def test_overrides_file_errors(tmp_path):
    (tmp_path / "events.overrides.json").write_text('{"rawish": {}}')
    with pytest.raises(suites.SuiteError, match="unknown suite kinds"):
        suites.load_overrides("events", tmp_path)
    (tmp_path / "events.overrides.json").write_text("{nope")
    with pytest.raises(suites.SuiteError, match="events.overrides.json: not valid JSON"):
        suites.load_overrides("events", tmp_path)
    with pytest.raises(suites.SuiteError, match="no stored raw suite"):
        suites.load_suite("events", "raw", tmp_path)


def test_write_suites_round_trip(tmp_path):
    spec = spec_for("events")
    paths = suites.write_suites(spec, tmp_path)
    assert [p.name for p in paths] == ["events.raw.json", "events.clean.json"]
    assert suites.load_suite("events", "clean", tmp_path) == suites.load_suite("events", "clean")


def test_suite_follows_a_different_spec():
    spec = parse_spec(
        {
            "name": "tiny",
            "time_column": "ts",
            "key": ["a", "b"],
            "group_column": "a",
            "label": "y",
            "row_count": {"min": 10, "max": 100},
            "columns": {
                "a": {"type": "string", "required": True},
                "b": {"type": "int", "required": True},
                "ts": {"type": "timestamp"},
                "y": {"type": "bool"},
            },
        }
    )
    doc = suites.generate_suite(spec, "clean")
    types = {e["type"]: e["kwargs"] for e in doc["expectations"]}
    assert types["expect_compound_columns_to_be_unique"] == {"column_list": ["a", "b"]}
    assert types["expect_table_row_count_to_be_between"] == {"min_value": 10, "max_value": 100}


def test_resolve_fills_suite_parameters_and_rejects_unknown():
    doc = suites.load_suite("events", "raw")
    exps = resolve(doc, {"interval_start": "S", "interval_end": "E"})
    ts = [e for e in exps if e["kwargs"].get("column") == "event_ts" and "min_value" in e["kwargs"]][0]
    assert (ts["kwargs"]["min_value"], ts["kwargs"]["max_value"]) == ("S", "E")
    with pytest.raises(SuiteNotSupported, match="suite parameter 'interval_(start|end)'"):
        resolve(doc, {})
    with pytest.raises(SuiteNotSupported, match="expect_column_to_be_shiny"):
        resolve({"name": "x", "expectations": [{"type": "expect_column_to_be_shiny", "kwargs": {}}]}, {})


def test_psi_ks_and_share_delta():
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 100, 2049)
    a = np.histogram(rng.normal(50, 10, 50_000), edges)[0]
    b = np.histogram(rng.normal(50, 10, 50_000), edges)[0]
    c = np.histogram(rng.normal(60, 10, 50_000), edges)[0]
    psi_same, ks_same = drift.psi_ks(a, b)
    psi_shift, ks_shift = drift.psi_ks(a, c)
    assert psi_same < 0.01 and ks_same < 0.02
    assert psi_shift > 0.5 and ks_shift == pytest.approx(0.38, abs=0.03)  # Phi(0.5) - Phi(-0.5)
    d, cat, new = drift.share_delta({"a": 50, "b": 50}, {"a": 20, "b": 70, "z": 10})
    assert d == pytest.approx(0.3) and cat == "a" and new == ["z"]


def test_uniqueness_round_two_compares_exact_keys(tmp_path):
    import pyarrow as pa

    from tasks.io import parquet as parquet_io
    from tasks.validation import partials

    t = pa.table({"k": ["a", "b", "c", "a", None]})
    parquet_io.write_table(str(tmp_path / "f.parquet"), t, "f.parquet")
    chunk = partials.Chunk(str(tmp_path / "f.parquet"), [0], 5, 0, ["k"])
    h = partials.key_hash(pa.table({"k": ["a", "b", "c"]}))
    # pretend "b" and "c" collided with "a" in round 1: round 2 still counts only the real duplicate
    keys = partials.keys_with_hashes(chunk, None, ["k"], h)
    assert sorted(keys.column("k").to_pylist()) == ["a", "a", "b", "c"]
    assert partials.count_duplicates(keys) == {"unexpected_count": 2, "examples": ["a"]}
    assert partials.candidate_hashes(np.array([1, 2, 2], np.uint64), np.array([3, 1], np.uint64)).tolist() == [1, 2]
    # the hash is stable and sees every byte
    assert (
        partials.hash_values(pa.array(["ab", "ba", "ab", ""])).tolist()[0]
        == partials.hash_values(pa.array(["ab"])).tolist()[0]
    )
    assert len(set(partials.hash_values(pa.array(["ab", "ba", "", "a", "b"])).tolist())) == 5
