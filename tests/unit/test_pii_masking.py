"""Example values of PII columns (``pii: true`` in the spec: user_id, email) never reach the Data Docs
pages, the GX result JSON, the validation manifest or the report; counts and non-PII examples stay."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.publishing import report
from tasks.validation.pii import MASK, mask_result, mask_summary
from tasks.validation.validate import run_clean
from tests.lake_files import committed_file
from tests.unit.validate_data import ThreadCluster, clean_table, commit_tables, context

D1 = "2026-11-01"


@pytest.fixture(scope="module")
def addr():
    with ThreadCluster() as a:
        yield a


def test_mask_result_masks_values_of_pii_columns_only():
    res = {"element_count": 9, "unexpected_count": 3, "unexpected_percent": 33.3,
           "partial_unexpected_list": ["u1", None, "u2"],
           "partial_unexpected_counts": [{"value": "u1", "count": 2}],
           "details": {"shared_examples": ["u7"], "groups": 4, "observed_min": "u0", "observed_max": "u9"}}
    masked = mask_result(res, ["user_id"], ["user_id", "email"])
    assert masked["partial_unexpected_list"] == [MASK, None, MASK]  # a null stays a null: it is no value
    assert masked["partial_unexpected_counts"] == [{"value": MASK, "count": 2}]
    assert masked["details"] == {"shared_examples": [MASK], "groups": 4, "observed_min": MASK, "observed_max": MASK}
    assert {k: masked[k] for k in ("element_count", "unexpected_count", "unexpected_percent")} == {
        "element_count": 9, "unexpected_count": 3, "unexpected_percent": 33.3}
    assert mask_result(res, ["event_id"], ["user_id"]) == res  # not a PII column: untouched
    # a compound key's examples: only the PII part is masked
    compound = {"partial_unexpected_list": [{"event_id": "e1", "user_id": "u1"}]}
    assert mask_result(compound, ["event_id", "user_id"], ["user_id"])["partial_unexpected_list"] == [
        {"event_id": "e1", "user_id": MASK}]
    # PII columns unknown (no readable spec): every column is treated as PII
    assert mask_result(compound, ["event_id"], None)["partial_unexpected_list"] == [{"event_id": MASK, "user_id": MASK}]


def test_mask_summary_masks_failing_entries():
    summary = {"suite": "s", "failing": [{"expectation": "x", "column": "email", "details": {"observed_min": "a@b"}},
                                         {"expectation": "y", "column": "price", "details": {"observed_min": 1.0}}]}
    out = mask_summary(summary, ["email"])
    assert out["failing"][0]["details"]["observed_min"] == MASK and out["failing"][1]["details"]["observed_min"] == 1.0
    assert summary["failing"][0]["details"]["observed_min"] == "a@b"  # the input is not changed


def _with_secret_ids(t: pa.Table) -> pa.Table:
    """`t` with user ids and e-mails that cannot occur in a page by chance ("secret-..."), so any
    occurrence is a leak."""
    users = t.column("user_id").to_pylist()
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id",
                     pa.array([f"secret-user-{u[1:]}" for u in users], pa.string()))
    emails = [None if e is None else f"secret-mail-{e}" for e in t.column("email").to_pylist()]
    return t.set_column(t.schema.get_field_index("email"), "email", pa.array(emails, pa.string()))


def test_split_leak_examples_are_masked_in_docs_json_manifest_and_report(tmp_path, addr):
    """The split-disjointness expectation fails with up to 20 shared user ids: the Data Docs say how
    many, never which; duplicated event ids (not PII) are still shown."""
    ctx = context(tmp_path, D1, addr, validation_policy="warn", gx_data_docs=True)
    base = clean_table(6_000, 1, D1)
    users = pc.cast(pc.utf8_slice_codeunits(base.column("user_id"), 1), pa.int64())
    mod = pc.bit_wise_and(users, 7).to_numpy()
    t = _with_secret_ids(base)
    dup = t.slice(0, 3)  # three event ids twice (6 rows unexpected): a non-PII expectation with examples
    commit_tables(ctx.lake, "clean", D1, [(pa.concat_tables([t, dup]), "")])
    train, val, test = t.filter(pa.array(mod < 6)), t.filter(pa.array(mod == 6)), t.filter(pa.array(mod == 7))
    leak = val.slice(0, 40)
    commit_tables(ctx.lake, "split", D1, [(pa.concat_tables([train, leak]), "train"), (val, "val"), (test, "test")])
    res = run_clean(ctx)
    shared = len(set(leak.column("user_id").to_pylist()))
    disjoint = next(f for f in res["failing"] if f["expectation"] == "expect_split_groups_to_be_disjoint")
    assert disjoint["observed_value"] == shared  # the count stays

    pages = {name: committed_file(tmp_path / "lake", "validation", "events", D1, f"clean/{name}").read_text()
             for name in ("index.html", "gx.html", "result.json")}
    for name, text in pages.items():
        assert "secret-" not in text, name
    result = json.loads(pages["result.json"])
    by_type = {r["expectation_config"]["type"]: r for r in result["results"]}
    shared_examples = by_type["expect_split_groups_to_be_disjoint"]["result"]["details"]["shared_examples"]
    assert shared_examples == [MASK] * min(shared, 20)
    unique = by_type["expect_column_values_to_be_unique"]["result"]
    assert unique["unexpected_count"] == 6 and set(unique["partial_unexpected_list"]) == {
        r for r in dup.column("event_id").to_pylist()}
    assert MASK in pages["index.html"] and dup.column("event_id")[0].as_py() in pages["index.html"]

    manifest = ctx.lake.manifest("validation", "events", D1)
    assert "secret-" not in json.dumps(manifest.extra, default=str)
    facts = report.collect("events", D1, lake_url=ctx.lake_url, keyring_path=ctx.keyring_path,
                           history_url=ctx.history_url, artifacts_url=str(tmp_path / "artifacts"))
    for text in (json.dumps(facts, default=str), report.summary_text(facts), report.html_page(facts)):
        assert "secret-" not in text
