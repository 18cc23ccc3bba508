"""Masking of PII example values in validation results: the Data Docs pages, the GX result JSON,
the validation manifest's summary and the report show counts and percents of a PII column
(``pii: true`` in the spec), never its values.

Pure Python (no Great Expectations import), so the report pages can use it cheaply.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

MASK = "[masked: pii]"
# Result fields that hold values of the checked column(s) (GX's and leptonflow's); counts, percents,
# type names and drift deltas are aggregates and stay.
VALUE_KEYS = frozenset({
    "partial_unexpected_list", "unexpected_list", "partial_unexpected_counts", "unexpected_values",
    "shared_examples", "observed_min", "observed_max", "category", "new_categories",
})


def _mask_value(v: Any, pii: Collection[str] | None) -> Any:
    if v is None:  # "the value was null" is no PII, and it is often the finding
        return None
    if isinstance(v, list | tuple):
        return [_mask_value(x, pii) for x in v]
    if isinstance(v, dict):  # a multi-column example {column: value}, or GX's {"value": v, "count": n}
        return {k: (x if k == "count" or (pii is not None and k not in pii and k != "value")
                    else _mask_value(x, pii)) for k, x in v.items()}
    return MASK


def _mask_fields(res: Any, pii: Collection[str] | None) -> Any:
    if isinstance(res, dict):
        return {k: _mask_value(v, pii) if k in VALUE_KEYS else _mask_fields(v, pii) for k, v in res.items()}
    if isinstance(res, list):
        return [_mask_fields(x, pii) for x in res]
    return res


def mask_result(result: dict[str, Any], columns: Collection[str], pii: Collection[str] | None) -> dict[str, Any]:
    """`result` (one expectation's result, or a failing-expectation summary) with the example values of
    PII columns masked. `pii` None means the PII columns are not known: every column is treated as PII."""
    if pii is not None and not set(columns) & set(pii):
        return result
    return _mask_fields(result, pii)


def mask_summary(summary: dict[str, Any], pii: Collection[str] | None) -> dict[str, Any]:
    """A validation summary (as in the manifest and XCom) whose failing entries carry no PII example value."""
    if "failing" not in summary:
        return summary
    failing = []
    for f in summary["failing"]:
        col = f.get("column")
        failing.append(mask_result(f, [col] if isinstance(col, str) else list(col or []), pii))
    return {**summary, "failing": failing}
