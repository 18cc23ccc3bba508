"""Expectation suites generated from the dataset spec plus hand-written overrides, stored as JSON.

Two suites per dataset, in GX 1.x ``ExpectationSuite`` JSON:

- ``<dataset>.raw.json``: what the landing zone must look like before cleaning: required
  columns present, no unknown columns, loose types, row-level rules with ``mostly`` (raw
  data is expected to be messy; a flood of bad rows is not), row-count bounds.
- ``<dataset>.clean.json``: the committed clean output: exact ordered schema and types,
  strict row-level rules, key uniqueness, row-count bounds, drift vs the previous interval.

``<dataset>.overrides.json`` (hand-written, optional) is merged in per suite kind::

    {"raw": {"mostly": 0.95,
             "drop": [{"type": "expect_column_values_to_be_between", "column": "price"}],
             "set": [{"type": "...", "column": "...", "kwargs": {"mostly": 0.9}}],
             "add": [{"type": "...", "kwargs": {...}, "meta": {...}}]},
     "clean": {...}}

Timestamp interval bounds are GX suite parameters (``$PARAMETER: interval_start/interval_end``)
filled per run. The stored JSON must equal what :func:`generate_suite` returns (a test checks);
regenerate with ``python -m tasks.validation.suites --dataset events``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from tasks.errors import LeptonflowError
from tasks.spec import ColumnSpec, DatasetSpec, spec_for
from tasks.validation import expectations as lfx

log = logging.getLogger(__name__)

SUITE_DIR = Path(__file__).resolve().parent.parent / "suites"
KINDS = ("raw", "clean")
DEFAULT_RAW_MOSTLY = 0.95

# Raw types a messy source may deliver per spec type (str(pyarrow type)); clean types are exact.
_TS = [f"timestamp[{u}]" for u in ("s", "ms", "us", "ns")] + [
    f"timestamp[{u}, tz=UTC]" for u in ("s", "ms", "us", "ns")
]
RAW_TYPES: dict[str, list[str]] = {
    "string": ["string", "large_string"],
    "category": ["string", "large_string", "dictionary<values=string, indices=int32, ordered=0>"],
    "int": ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"],
    "float": ["float", "double", "int32", "int64"],
    "bool": ["bool"],
    "timestamp": _TS,
}


class SuiteError(LeptonflowError, ValueError):
    """An overrides file or stored suite is malformed; the message names the file."""


def suite_name(dataset: str, kind: str) -> str:
    return f"{dataset}.{kind}"


def suite_path(dataset: str, kind: str, suite_dir: Path = SUITE_DIR) -> Path:
    return suite_dir / f"{dataset}.{kind}.json"


def overrides_path(dataset: str, suite_dir: Path = SUITE_DIR) -> Path:
    return suite_dir / f"{dataset}.overrides.json"


def load_overrides(dataset: str, suite_dir: Path = SUITE_DIR) -> dict[str, Any]:
    path = overrides_path(dataset, suite_dir)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc
    unknown = set(doc) - set(KINDS)
    if unknown:
        raise SuiteError(f"{path}: unknown suite kinds {sorted(unknown)}; expected {list(KINDS)}")
    return doc


def _normalize_meta(c: ColumnSpec) -> dict[str, Any]:
    # The engine trims and case-folds raw strings the way clean will before checking sets.
    return {"leptonflow": {"normalize": c.normalize, "trim": True}}


def _column_rules(spec: DatasetSpec, kind: str, mostly: float | None) -> list[Any]:
    m = {"mostly": mostly} if mostly is not None and mostly < 1.0 else {}
    out: list[Any] = []
    for c in spec.columns:
        if kind == "raw":
            out.append(gxe.ExpectColumnValuesToBeInTypeList(column=c.name, type_list=RAW_TYPES[c.type]))
        else:
            out.append(gxe.ExpectColumnValuesToBeOfType(column=c.name, type_=str(c.arrow_type())))
        if c.required:
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=c.name, **m))
        if c.type in ("int", "float") and (c.min is not None or c.max is not None):
            # clip columns are repaired by clean: in raw they may be out of range
            if kind == "clean" or c.on_out_of_range == "reject":
                out.append(gxe.ExpectColumnValuesToBeBetween(column=c.name, min_value=c.min, max_value=c.max, **m))
        if c.type == "timestamp" and c.name == spec.time_column:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c.name,
                    min_value={"$PARAMETER": "interval_start"},
                    max_value={"$PARAMETER": "interval_end"},
                    strict_max=True,
                    **m,
                )
            )
        if c.allowed:
            if kind == "clean":
                values = sorted(set(c.allowed) | ({c.unknown_value} if c.on_unknown == "map" else set()))
                out.append(gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=values))
            elif c.on_unknown == "reject":  # mapped columns may carry unknown values in raw
                out.append(
                    gxe.ExpectColumnValuesToBeInSet(
                        column=c.name, value_set=sorted(c.allowed), meta=_normalize_meta(c), **m
                    )
                )
    return out


def _drift_rules(spec: DatasetSpec) -> list[Any]:
    d = spec.drift
    out: list[Any] = []
    key = set(spec.key)
    for c in spec.columns:
        if c.name in key:
            continue
        if "psi_max" in d and c.type in ("int", "float") and c.min is not None and c.max is not None:
            out.append(lfx.ExpectColumnPsiToBeBelow(column=c.name, threshold=d["psi_max"]))
        if "category_share_delta_max" in d and c.type == "category":
            out.append(
                lfx.ExpectColumnCategoryShareDeltaToBeBelow(column=c.name, threshold=d["category_share_delta_max"])
            )
        if "null_rate_delta_max" in d and not c.required:
            out.append(lfx.ExpectColumnNullRateDeltaToBeBelow(column=c.name, threshold=d["null_rate_delta_max"]))
    return out


def _matches(cfg: dict[str, Any], sel: dict[str, Any]) -> bool:
    return cfg["type"] == sel["type"] and ("column" not in sel or cfg["kwargs"].get("column") == sel["column"])


def _check(cfg: dict[str, Any], suite: str) -> None:
    from tasks.validation.engine import SUPPORTED  # lazy: the engine pulls in distributed

    if cfg["type"] not in SUPPORTED:
        raise SuiteError(f"suite {suite}: expectation {cfg['type']!r} is not evaluated by leptonflow's engine")
    try:
        ExpectationConfiguration(type=cfg["type"], kwargs=cfg["kwargs"], meta=cfg.get("meta")).to_domain_obj()
    except Exception as exc:  # GX raises pydantic and its own errors: name the rule either way
        raise SuiteError(f"suite {suite}: invalid {cfg['type']} {cfg['kwargs']}: {exc}") from exc


def generate_suite(spec: DatasetSpec, kind: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite of `kind` ("raw" | "clean") for `spec`, as GX ExpectationSuite JSON."""
    if kind not in KINDS:
        raise SuiteError(f"unknown suite kind {kind!r}; expected one of {list(KINDS)}")
    ov = dict((overrides or {}).get(kind) or {})
    mostly = float(ov.get("mostly", DEFAULT_RAW_MOSTLY)) if kind == "raw" else None
    exps: list[Any] = []
    rc = spec.row_count
    if rc:
        exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=rc.get("min"), max_value=rc.get("max")))
    if kind == "raw":
        exps.append(gxe.ExpectTableColumnsToMatchSet(column_set=spec.required, exact_match=False))
        exps.append(gxe.ExpectTableColumnsToMatchSet(column_set=spec.column_names, exact_match=True))
    else:
        exps.append(gxe.ExpectTableColumnsToMatchOrderedList(column_list=spec.column_names))
    exps += _column_rules(spec, kind, mostly)
    if kind == "clean":
        if len(spec.key) == 1:
            exps.append(gxe.ExpectColumnValuesToBeUnique(column=spec.key[0]))
        else:
            exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.key)))
        exps += _drift_rules(spec)
        exps.append(lfx.ExpectSplitRowsToMatchClean())
        exps.append(lfx.ExpectSplitGroupsToBeDisjoint(column=spec.group_column))
    configs = [e.configuration.to_json_dict() for e in exps]
    for sel in ov.get("drop", []):
        configs = [c for c in configs if not _matches(c, sel)]
    for sel in ov.get("set", []):
        hits = [c for c in configs if _matches(c, sel)]
        if not hits:
            raise SuiteError(f"overrides for {spec.name}.{kind}: 'set' selector {sel} matches no expectation")
        for c in hits:
            c["kwargs"].update(sel.get("kwargs", {}))
    for add in ov.get("add", []):
        configs.append({"type": add["type"], "kwargs": add.get("kwargs", {}), "meta": add.get("meta", {})})
    for cfg in configs:  # overrides must be real GX expectations the distributed engine evaluates
        _check(cfg, f"{spec.name}.{kind}")
    suite = gx.ExpectationSuite(
        name=suite_name(spec.name, kind), expectations=configs, meta={"generated_from": "spec+overrides"}
    )
    doc = suite.to_json_dict()
    doc.pop("id", None)
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n"


def write_suites(spec: DatasetSpec, suite_dir: Path = SUITE_DIR) -> list[Path]:
    overrides = load_overrides(spec.name, suite_dir)
    paths = []
    for kind in KINDS:
        path = suite_path(spec.name, kind, suite_dir)
        path.write_text(dumps(generate_suite(spec, kind, overrides)))
        paths.append(path)
    return paths


def load_suite(dataset: str, kind: str, suite_dir: Path = SUITE_DIR) -> dict[str, Any]:
    """The stored suite JSON (the one a run validates against)."""
    path = suite_path(dataset, kind, suite_dir)
    if not path.exists():
        raise SuiteError(
            f"{path}: no stored {kind} suite for dataset {dataset!r}; run python -m tasks.validation.suites"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m tasks.validation.suites", description="regenerate stored suites")
    p.add_argument("--dataset", action="append", required=True)
    args = p.parse_args(argv)
    from tasks.context import Settings

    for name in args.dataset:
        for path in write_suites(spec_for(name, Settings.from_env().specs_dir)):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
