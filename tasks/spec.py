"""Dataset specs: the YAML files of a specs folder (default dags/datasets/) parsed into typed objects.

A spec is data, not code. Every step (clean, split, validate, train, ...) reads its rules from
here, which is what makes the pipeline dataset-agnostic. Because a spec *is* the rules, a typo
must never quietly become a different rule: :func:`parse_spec` checks the whole document
against a strict schema (every key known, every value of the right type, in its enum and
bounds, every column it names declared) and raises one :class:`SpecError` listing every
problem as ``<file>: <field path>: <what is wrong>``, with the nearest valid name suggested.

One broken file never hides the others: :func:`scan_specs` returns the good specs and the
errors of the bad files side by side, and :func:`spec_for` reads only the file that declares
the dataset asked for.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml

from tasks.errors import LeptonflowError, UsageError

log = logging.getLogger(__name__)

ColumnType = Literal["string", "int", "float", "bool", "timestamp", "category"]
_TYPES = ("string", "int", "float", "bool", "timestamp", "category")
SPEC_DIR = Path(__file__).resolve().parent.parent / "dags" / "datasets"
NAME_RE = re.compile(r"[a-z][a-z0-9_]*")  # dataset names become DAG ids and lake path segments
NAME_MAX = 64
# Ops of `features.derived` (tasks.prep.features implements them; a test keeps the two in step).
TIME_OPS = ("hour", "day_of_week", "day", "month", "minute")
DERIVED_OPS = (*TIME_OPS, "log1p")
# Bounds of the numeric sections: (min, max, min exclusive, integer). `anomaly` mirrors the
# bounds of the settings it gives defaults to (anomaly_max_rate, anomaly_contamination in
# tasks.params; a test keeps them in step).
_SECTIONS: dict[str, dict[str, tuple[float | None, float | None, bool, bool]]] = {
    "drift": {"psi_max": (0, None, False, False), "null_rate_delta_max": (0, 1, False, False),
              "category_share_delta_max": (0, 1, False, False)},
    "row_count": {"min": (0, None, False, True), "max": (0, None, False, True)},
    "anomaly": {"max_rate": (0, 1, False, False), "contamination": (0, 0.5, True, False)},
}


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: the field path (``columns.price.min``; empty: the whole file) and why.

    `file`: the spec file, when it is not the error's `source` (an error that gathers several files).
    """

    field: str
    message: str
    file: str = ""


class SpecError(LeptonflowError, ValueError):
    """A dataset spec is malformed. One line per problem: ``<spec file>: <field path>: <problem>``.

    `source` is the spec file (or folder, for lookups), `problems` the :class:`SpecProblem` list.
    """

    def __init__(self, source: str, problems: Iterable[SpecProblem] | str) -> None:
        self.source = str(source)
        self.problems = (SpecProblem("", problems),) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(
            f"{p.file or self.source}: {p.field}: {p.message}" if p.field else f"{p.file or self.source}: {p.message}"
            for p in self.problems))

    @classmethod
    def combine(cls, errors: Sequence[SpecError], source: str = "") -> SpecError:
        """One error listing the problems of several files, each line still naming its own file."""
        return cls(source, [replace(p, file=p.file or e.source) for e in errors for p in e.problems])

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (process pools, Dask) despite the custom signature
        return (type(self), (self.source, self.problems))

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    required: bool = False
    pii: bool = False
    min: float | None = None
    max: float | None = None
    on_out_of_range: Literal["reject", "clip"] = "reject"
    allowed: tuple[str, ...] | None = None
    on_unknown: Literal["reject", "map"] = "reject"
    unknown_value: str = "__unknown__"
    normalize: Literal["lower", "upper", "none"] = "none"

    def arrow_type(self) -> pa.DataType:
        return {
            "string": pa.string(),
            "category": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"),
        }[self.type]


@dataclass(frozen=True)
class SplitSpec:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "leptonflow"


@dataclass(frozen=True)
class LabelSpec:
    column: str
    task: Literal["classification", "regression"] = "classification"


@dataclass(frozen=True)
class FeatureSpec:
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    derived: dict[str, dict[str, str]] = field(default_factory=dict)
    min_category_count: int = 5


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    time_column: str
    key: tuple[str, ...]
    group_column: str
    label: LabelSpec
    split: SplitSpec = SplitSpec()
    features: FeatureSpec = FeatureSpec()
    dedupe_order: tuple[str, ...] = ()
    description: str = ""
    schedule: str = "@daily"
    start_date: str = "2026-11-01"
    drift: dict[str, float] = field(default_factory=dict)
    row_count: dict[str, int] = field(default_factory=dict)
    anomaly: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"dataset {self.name!r} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def pii_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.pii]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type()) for c in self.columns])

    @property
    def interval_unit(self) -> str:
        """How this dataset's intervals are named: ``hour`` (``YYYY-MM-DDTHH``) when its schedule fires more
        than once a day, else ``day`` (``YYYY-MM-DD``)."""
        return interval_unit(self.schedule)

    def fingerprint(self) -> str:
        """Stable hash of the spec's content: part of every step's cache key."""
        content = asdict(self)
        content.pop("source")  # where the spec lives is not what it says
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---- interval names ------------------------------------------------------------------------------
_DAY_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_HOUR_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}$")
UNIT_LENGTH = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
UNIT_FORM = {"day": "an ISO date YYYY-MM-DD", "hour": "an ISO hour YYYY-MM-DDTHH"}


def interval_unit(schedule: str) -> str:
    """``hour`` for schedules that fire more than once a day (``@hourly``, ``0 * * * *``), else ``day``."""
    if schedule == "@hourly":
        return "hour"
    from croniter import croniter

    try:
        it = croniter(schedule, datetime(2026, 1, 1))
        first, second = it.get_next(datetime), it.get_next(datetime)
    except (ValueError, KeyError):
        return "day"
    return "hour" if second - first < timedelta(days=1) else "day"


def parse_interval(ds: Any, unit: str | None = None, argument: str = "ds") -> tuple[datetime, timedelta]:
    """(UTC start, length) of the interval `ds` names: an ISO date (a day) or an ISO hour (``2026-11-25T10``).

    `unit` (a dataset's :attr:`DatasetSpec.interval_unit`) allows only that form. Anything else, like
    ``20261125``, ``2026-11-25T00:00:00`` or ``2026-02-30``, is a :class:`UsageError` naming `argument`.
    """
    text = ds if isinstance(ds, str) else ""
    found = "day" if _DAY_RE.match(text) else "hour" if _HOUR_RE.match(text) else None
    forms = UNIT_FORM[unit] if unit else f"{UNIT_FORM['day']} or {UNIT_FORM['hour']}"
    if found is None:
        raise UsageError(argument, f"{ds!r} is not an interval name: give {forms}")
    try:
        start = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError as exc:
        raise UsageError(argument, f"{ds!r} is not a real {'date' if found == 'day' else 'hour'} ({exc})") from None
    if unit and found != unit:
        raise UsageError(argument, f"{ds!r} names an {found}, but the dataset's intervals are {unit}s: give {forms}")
    return start, UNIT_LENGTH[found]


# ---- the schema ---------------------------------------------------------------------------------
TOP_KEYS = ("name", "description", "schedule", "start_date", "time_column", "key", "dedupe_order",
            "group_column", "split", "label", "drift", "row_count", "anomaly", "columns", "features")
COLUMN_KEYS = ("type", "required", "pii", "min", "max", "on_out_of_range", "allowed", "on_unknown",
               "unknown_value", "normalize")
LABEL_KEYS = ("column", "task")
SPLIT_KEYS = ("train", "val", "test", "salt")
FEATURE_KEYS = ("numeric", "categorical", "derived", "min_category_count")
DERIVED_KEYS = ("from", "op")
ENUMS = {"on_out_of_range": ("reject", "clip"), "on_unknown": ("reject", "map"),
         "normalize": ("none", "lower", "upper"), "task": ("classification", "regression")}
_NUMERIC, _TEXT = ("int", "float"), ("string", "category")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING = object()


def _path(base: str, key: Any) -> str:
    """``base.key`` (``base['odd key']`` when the key is not a plain name; ``base[3]`` for list items)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{base}[{key}]"
    seg = str(key)
    if not _IDENT.fullmatch(seg):
        return f"{base}[{seg!r}]"
    return f"{base}.{seg}" if base else seg


def _suggest(word: Any, choices: Iterable[str]) -> str:
    hits = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def _show(value: Any) -> str:
    """How a YAML value reads in a message, with its type when the type is the problem."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict | list):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


class _Checker:
    """Collects the problems of one spec document, each with its field path."""

    def __init__(self) -> None:
        self.problems: list[SpecProblem] = []
        self.declared: set[Any] = set()  # column names declared, valid or not (no follow-up errors for the latter)

    def fail(self, path: str, message: str) -> Any:
        self.problems.append(SpecProblem(path, message))
        return _MISSING

    def mapping(self, raw: Any, path: str, keys: Sequence[str], what: str = "a mapping") -> dict[Any, Any]:
        """`raw` as a dict whose keys are all in `keys` (unknown keys are problems, with a suggestion)."""
        if not isinstance(raw, dict):
            self.fail(path, f"must be {what}, got {_show(raw)}")
            return {}
        for key in raw:
            if key not in keys:
                self.fail(_path(path, key), f"unknown field{_suggest(key, keys)}; known fields: {', '.join(keys)}")
        return raw

    def text(self, raw: dict, key: str, path: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> Any:
        value = raw.get(key, _MISSING)
        if value is _MISSING:
            return default if default is not _MISSING else self.fail(path, "is required")
        if not isinstance(value, str):
            return self.fail(path, f"must be a string, got {_show(value)}")
        if choices and value not in choices:
            return self.fail(path, f"{value!r} is not one of {', '.join(choices)}{_suggest(value, choices)}")
        return value

    def boolean(self, raw: dict, key: str, path: str) -> Any:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            hint = " (write true or false, unquoted)" if isinstance(value, str | int) else ""
            return self.fail(path, f"must be true or false, got {_show(value)}{hint}")
        return value

    def number(self, value: Any, path: str, integer: bool = False, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False) -> Any:
        """`value` unchanged when it is a finite number (an integral one if `integer`) within the bounds."""
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = ""
            if isinstance(value, str):
                try:
                    if math.isfinite(float(value)):
                        hint = " (YAML read it as text: write a plain number such as 1000 or 1.0e+3, unquoted)"
                except ValueError:
                    pass
            return self.fail(path, f"must be {kind}, got {_show(value)}{hint}")
        if not math.isfinite(value):
            return self.fail(path, f"must be a finite number, got {value!r}")
        if integer and value != int(value):
            return self.fail(path, f"must be an integer, got {value!r}")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            return self.fail(path, f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
        if hi is not None and value > hi:
            return self.fail(path, f"must be <= {hi:g}, got {value!r}")
        return value

    def names(self, raw: dict, key: str, path: str, required: bool = False) -> tuple[str, ...]:
        """A list of distinct, non-empty strings (column names). A bare string is a problem, not a list."""
        value = raw.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.fail(path, "is required")
            return ()
        if isinstance(value, str):
            self.fail(path, f"must be a list, got the string {value!r} (write [{value}])")
            return ()
        if not isinstance(value, list):
            self.fail(path, f"must be a list of column names, got {_show(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail(_path(path, i), f"must be a column name, got {_show(item)}")
            elif item in out:
                self.fail(_path(path, i), f"{item!r} is listed twice")
            else:
                out.append(item)
        if required and not value:
            self.fail(path, "must not be empty")
        return tuple(out)


def _column(c: _Checker, name: Any, rules: Any, path: str) -> ColumnSpec | None:
    if not isinstance(name, str) or not name:
        hint = " (YAML reads yes/no/on/off/true/false as booleans and bare digits as numbers: quote it)"
        c.fail(path, f"column name must be a non-empty string, got {_show(name)}{hint}")
        return None
    if not isinstance(rules, dict):
        example = f" (write {name}: {{type: {rules}}})" if rules in _TYPES else ""
        c.fail(path, f"must be a mapping of rules such as {{type: string}}, got {_show(rules)}{example}")
        return None
    rules = c.mapping(rules, path, COLUMN_KEYS)
    ctype = c.text(rules, "type", _path(path, "type"), choices=_TYPES)
    kw: dict[str, Any] = {}
    for key in ("required", "pii"):
        if key in rules:
            kw[key] = c.boolean(rules, key, _path(path, key))
    for key in ("on_out_of_range", "on_unknown", "normalize"):
        if key in rules:
            kw[key] = c.text(rules, key, _path(path, key), choices=ENUMS[key])
    if "unknown_value" in rules:
        kw["unknown_value"] = c.text(rules, "unknown_value", _path(path, "unknown_value"))
    _bounds(c, rules, path, ctype, kw)
    if "allowed" in rules:
        kw["allowed"] = _allowed(c, rules["allowed"], _path(path, "allowed"), ctype, kw.get("normalize", "none"))
    if ctype in _TYPES and ctype not in _TEXT:
        for key in ("normalize", "on_unknown", "unknown_value"):
            if key in rules:
                c.fail(_path(path, key), f"applies to string and category columns only; {name!r} is {ctype}")
    if _MISSING in kw.values() or ctype is _MISSING:
        return None
    return ColumnSpec(name=name, type=ctype, **kw)


def _bounds(c: _Checker, rules: dict, path: str, ctype: Any, kw: dict[str, Any]) -> None:
    """min / max: finite numbers (integers on int columns), on int and float columns only, min <= max."""
    for key in ("min", "max"):
        if key not in rules:
            continue
        if ctype in _TYPES and ctype not in _NUMERIC:
            c.fail(_path(path, key), f"range rules apply to int and float columns only; this column is {ctype}")
            continue
        kw[key] = c.number(rules[key], _path(path, key), integer=ctype == "int")
    lo, hi = kw.get("min"), kw.get("max")
    if lo not in (None, _MISSING) and hi not in (None, _MISSING) and lo > hi:
        c.fail(_path(path, "min"), f"min {lo!r} is greater than max {hi!r}")


def _allowed(c: _Checker, value: Any, path: str, ctype: Any, normalize: Any) -> Any:
    """`allowed`: a non-empty list of distinct strings (numbers are taken as their text), as a tuple."""
    if ctype in _TYPES and ctype not in _TEXT:
        return c.fail(path, f"applies to string and category columns only; this column is {ctype}")
    if not isinstance(value, list):
        extra = f" (write [{value}])" if isinstance(value, str) else ""
        return c.fail(path, f"must be a list of values, got {_show(value)}{extra}")
    if not value:
        return c.fail(path, "must not be empty (leave `allowed` out to accept any value)")
    out: list[str] = []
    for i, item in enumerate(value):
        p = _path(path, i)
        if isinstance(item, bool) or item is None or not isinstance(item, str | int | float):
            hint = " (YAML reads yes/no/on/off/NO as booleans: quote the value)" if isinstance(item, bool) else ""
            c.fail(p, f"must be a string, got {_show(item)}{hint}")
            continue
        text = str(item)
        if normalize in ("lower", "upper") and text != (text.lower() if normalize == "lower" else text.upper()):
            c.fail(p, f"{text!r} can never match: values are normalized to {normalize} case before the check")
        if text in out:
            c.fail(p, f"{text!r} is listed twice")
        out.append(text)
    return tuple(out)


def _columns(c: _Checker, raw: Any) -> dict[str, ColumnSpec]:
    if raw is _MISSING:
        c.fail("columns", "is required")
        return {}
    if not isinstance(raw, dict) or not raw:
        c.fail("columns", f"must be a non-empty mapping column name -> rules, got {_show(raw)}")
        return {}
    out: dict[str, ColumnSpec] = {}
    c.declared.update(raw)
    for name, rules in raw.items():
        col = _column(c, name, rules, _path("columns", name))
        if col is not None:
            out[col.name] = col
    return out


def _label(c: _Checker, raw: Any) -> LabelSpec | None:
    if raw is _MISSING:
        c.fail("label", "is required")
        return None
    if isinstance(raw, str):
        return LabelSpec(column=raw)
    raw = c.mapping(raw, "label", LABEL_KEYS, "a column name or a mapping {column, task}")
    column = c.text(raw, "column", "label.column")
    task = c.text(raw, "task", "label.task", default="classification", choices=ENUMS["task"])
    if column is _MISSING or task is _MISSING:
        return None
    return LabelSpec(column=column, task=task)


def _split(c: _Checker, raw: Any) -> SplitSpec:
    raw = c.mapping(raw, "split", SPLIT_KEYS)
    defaults = SplitSpec()
    ratios: dict[str, Any] = {}
    for key in ("train", "val", "test"):
        value = raw.get(key, getattr(defaults, key))
        ratios[key] = c.number(value, f"split.{key}", lo=0, hi=1)
    salt = c.text(raw, "salt", "split.salt", default=defaults.salt)
    if _MISSING in ratios.values() or salt is _MISSING:
        return defaults
    if ratios["train"] == 0:
        c.fail("split.train", "must be > 0: a model needs training rows")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-9:
        c.fail("split", f"split ratios sum to {total:g} (train {ratios['train']}, val {ratios['val']}, "
                        f"test {ratios['test']}), expected 1.0")
    return SplitSpec(salt=salt, **ratios)


def _section(c: _Checker, raw: dict, key: str) -> dict[str, Any]:
    """drift / row_count / anomaly: known keys, numbers within their bounds (ints in row_count)."""
    bounds = _SECTIONS[key]
    section = c.mapping(raw.get(key) or {}, key, tuple(bounds))
    out: dict[str, Any] = {}
    for name, value in section.items():
        if name not in bounds:
            continue
        lo, hi, lo_open, integer = bounds[name]
        checked = c.number(value, _path(key, name), integer=integer, lo=lo, hi=hi, lo_open=lo_open)
        if checked is not _MISSING:
            out[name] = int(checked) if integer else float(checked)
    if "min" in out and "max" in out and key == "row_count" and out["min"] > out["max"]:
        c.fail("row_count.min", f"min {out['min']} is greater than max {out['max']}")
    return out


def _features(c: _Checker, raw: Any, columns: dict[str, ColumnSpec]) -> FeatureSpec:
    raw = c.mapping(raw or {}, "features", FEATURE_KEYS)
    derived = _derived(c, raw.get("derived") or {}, columns)
    numeric = c.names(raw, "numeric", "features.numeric")
    categorical = c.names(raw, "categorical", "features.categorical")
    count = c.number(raw.get("min_category_count", 5), "features.min_category_count", integer=True, lo=1)
    for i, name in enumerate(numeric):
        p = _path("features.numeric", i)
        if name in derived:
            continue
        col = _ref(c, name, p, columns, extra=derived)
        if col is not None and col.type not in ("int", "float", "bool"):
            c.fail(p, f"numeric feature {name!r} is a {col.type} column; numeric features are int, float, "
                      "bool or derived")
    for i, name in enumerate(categorical):
        p = _path("features.categorical", i)
        if name in numeric:
            c.fail(p, f"{name!r} is also a numeric feature")
        elif name in derived:
            c.fail(p, f"derived feature {name!r} is numeric; categorical features are string or category columns")
        else:
            col = _ref(c, name, p, columns)
            if col is not None and col.type not in _TEXT:
                c.fail(p, f"categorical feature {name!r} is a {col.type} column; use string or category columns")
    return FeatureSpec(numeric=numeric, categorical=categorical, derived=derived,
                       min_category_count=int(count) if count is not _MISSING else 5)


def _derived(c: _Checker, raw: Any, columns: dict[str, ColumnSpec]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if not isinstance(raw, dict):
        c.fail("features.derived", f"must be a mapping name -> {{from: column, op: ...}}, got {_show(raw)}")
        return out
    for name, rule in raw.items():
        path = _path("features.derived", name)
        if not isinstance(name, str) or not name:
            c.fail(path, f"derived feature name must be a string, got {_show(name)}")
            continue
        if name in columns:
            c.fail(path, f"{name!r} is already a column; a derived feature needs a new name")
        rule = c.mapping(rule, path, DERIVED_KEYS, "a mapping {from: column, op: ...}")
        src = c.text(rule, "from", _path(path, "from"))
        op = c.text(rule, "op", _path(path, "op"), choices=DERIVED_OPS)
        col = _ref(c, src, _path(path, "from"), columns) if src is not _MISSING else None
        if col is not None and op in TIME_OPS and col.type != "timestamp":
            c.fail(_path(path, "op"), f"{op!r} needs a timestamp column; {src!r} is {col.type}")
        if col is not None and op == "log1p" and col.type not in ("int", "float", "bool"):
            c.fail(_path(path, "op"), f"'log1p' needs a numeric column; {src!r} is {col.type}")
        if src is not _MISSING and op is not _MISSING:
            out[name] = dict(rule)
    return out


def _ref(c: _Checker, name: Any, path: str, columns: dict[str, ColumnSpec],
         extra: Iterable[str] = ()) -> ColumnSpec | None:
    """The column `name` refers to; a problem naming the nearest declared column when there is none."""
    if name in columns:
        return columns[name]
    if name in c.declared:  # declared with its own problems, reported there
        return None
    c.fail(path, f"refers to unknown column {name!r}{_suggest(name, [*columns, *extra])}")
    return None


def _top_text(c: _Checker, raw: dict, key: str, default: str) -> str:
    value = raw.get(key, default)
    if isinstance(value, date | datetime) and key == "start_date":  # unquoted YAML dates
        value = str(value)
    if not isinstance(value, str):
        c.fail(key, f"must be a string, got {_show(value)}")
        return default
    return value


def _schedule_ok(c: _Checker, schedule: str) -> None:
    from croniter import croniter  # pure Python; Airflow's cron timetables use it too

    if not croniter.is_valid(schedule):
        c.fail("schedule", f"{schedule!r} is not a cron expression or preset (@hourly, @daily, @weekly, ...)"
                           f"{_suggest(schedule, ('@hourly', '@daily', '@weekly', '@monthly', '@yearly'))}")


def _start_date_ok(c: _Checker, start: str) -> None:
    try:
        parsed = datetime.fromisoformat(start)
    except ValueError:
        c.fail("start_date", f"{start!r} is not a date (YYYY-MM-DD)")
        return
    if parsed.tzinfo is not None:
        c.fail("start_date", f"{start!r} has a time zone; give a date (YYYY-MM-DD): intervals are in UTC")


def _name_ok(c: _Checker, raw: dict) -> str:
    name = raw.get("name", _MISSING)
    if name is _MISSING:
        return c.fail("name", "is required")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
        return c.fail("name", f"{_show(name)} is not a valid dataset name: lowercase letters, digits and _, "
                              f"starting with a letter, at most {NAME_MAX} characters (it is a DAG id and a "
                              "lake folder)")
    return name


def _relations(c: _Checker, raw: dict, columns: dict[str, ColumnSpec], label: LabelSpec | None,
               features: FeatureSpec) -> dict[str, Any]:
    """The columns the top level names: time, key, group, dedupe order, label; each must be declared."""
    out: dict[str, Any] = {}
    for key in ("time_column", "group_column"):
        out[key] = c.text(raw, key, key)
        if out[key] is not _MISSING:
            col = _ref(c, out[key], key, columns)
            if key == "time_column" and col is not None and col.type != "timestamp":
                c.fail(key, f"{out[key]!r} is a {col.type} column; the time column must be a timestamp")
    for key in ("key", "dedupe_order"):
        out[key] = c.names(raw, key, key, required=key == "key")
        for i, name in enumerate(out[key]):
            _ref(c, name, _path(key, i), columns)
    if label is not None:
        col = _ref(c, label.column, "label.column" if isinstance(raw.get("label"), dict) else "label", columns)
        if col is not None and col.type not in ("int", "float", "bool"):
            c.fail("label", f"label column {label.column!r} is a {col.type} column; labels are bool, int or float")
        if col is not None and label.task == "regression" and col.type == "bool":
            c.fail("label.task", f"regression needs a numeric label; {label.column!r} is bool (use classification)")
        if label.column in (*features.numeric, *features.categorical):
            c.fail("features", f"the label column {label.column!r} is also a feature (the model would see the answer)")
    return out


def parse_spec(raw: Any, source: str = "<dict>") -> DatasetSpec:
    """`raw` (a parsed spec document) as a DatasetSpec; SpecError lists every problem with its field path."""
    if not isinstance(raw, dict):
        raise SpecError(source, f"must be a mapping at top level (name: ..., columns: ...), got {_show(raw)}")
    c = _Checker()
    c.mapping(raw, "", TOP_KEYS)
    name = _name_ok(c, raw)
    columns = _columns(c, raw.get("columns", _MISSING))
    label = _label(c, raw.get("label", _MISSING))
    features = _features(c, raw.get("features"), columns)
    rel = _relations(c, raw, columns, label, features)
    split = _split(c, raw.get("split") or {})
    sections = {key: _section(c, raw, key) for key in _SECTIONS}
    description = _top_text(c, raw, "description", "")
    schedule = _top_text(c, raw, "schedule", "@daily")
    start_date = _top_text(c, raw, "start_date", "2026-11-01")
    _schedule_ok(c, schedule)
    _start_date_ok(c, start_date)
    if c.problems:
        raise SpecError(source, c.problems)
    return DatasetSpec(
        name=name, columns=tuple(columns.values()), time_column=rel["time_column"], key=rel["key"],
        group_column=rel["group_column"], label=label, split=split, features=features,
        dedupe_order=rel["dedupe_order"], description=description, schedule=schedule, start_date=start_date,
        source=source, **sections,
    )


# ---- files and folders ----------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=True))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except OSError as exc:
        raise SpecError(str(path), f"cannot be read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), f"is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(path), f"not valid YAML: {where}{problem}") from None


def load_spec(path: str | Path) -> DatasetSpec:
    """The spec in file `path`; SpecError (naming the file and each field) when it is malformed."""
    path = Path(path)
    return parse_spec(_read_yaml(path), source=str(path))


def spec_files(spec_dir: str | Path = SPEC_DIR) -> list[Path]:
    """The spec files of a folder (``*.yaml``, ``*.yml``; hidden files skipped), sorted."""
    spec_dir = Path(spec_dir)
    if not spec_dir.is_dir():
        raise SpecError(str(spec_dir), "the specs folder does not exist")
    files = {*spec_dir.glob("*.yaml"), *spec_dir.glob("*.yml")}
    return sorted(p for p in files if not p.name.startswith("."))


def _declared_name(path: Path) -> str:
    """The dataset a file declares (its `name`), or the file's stem when the file cannot say."""
    try:
        raw = _read_yaml(path)
    except SpecError:
        return path.stem
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else path.stem


def _index(spec_dir: str | Path) -> tuple[dict[str, Path], list[SpecError]]:
    """Dataset name -> the file that declares it (the first, in sorted order), and one error per later file."""
    owners: dict[str, Path] = {}
    dupes: list[SpecError] = []
    for path in spec_files(spec_dir):
        name = _declared_name(path)
        if name in owners:
            dupes.append(SpecError(str(path), [SpecProblem("name", f"dataset {name!r} is already declared by "
                                                                   f"{owners[name]}")]))
        else:
            owners[name] = path
    return owners, dupes


@dataclass(frozen=True)
class SpecScan:
    """Every spec of a folder: the good ones, and one SpecError per bad file (the DAG file reports those)."""

    specs: tuple[DatasetSpec, ...]
    errors: tuple[SpecError, ...]


def scan_specs(spec_dir: str | Path = SPEC_DIR) -> SpecScan:
    """Load every spec of `spec_dir`; a bad file becomes an entry of `errors` and hides no other file."""
    try:
        owners, errors = _index(spec_dir)
    except SpecError as exc:  # no folder: nothing to build, and that is the one error
        return SpecScan((), (exc,))
    specs: list[DatasetSpec] = []
    for path in sorted(owners.values()):
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            errors.append(exc)
    return SpecScan(tuple(specs), tuple(sorted(errors, key=lambda e: e.source)))


def spec_for(name: str, spec_dir: str | Path = SPEC_DIR) -> DatasetSpec:
    """The spec of dataset `name`: only the file that declares it is read in full (other files may be broken)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpecError(str(spec_dir), f"{name!r} is not a valid dataset name (lowercase letters, digits and _, "
                                       "starting with a letter)")
    owners, _ = _index(spec_dir)
    if name not in owners:
        raise SpecError(str(spec_dir), f"no dataset spec named {name!r}{_suggest(name, owners)}; "
                                       f"datasets here: {', '.join(sorted(owners)) or 'none'}")
    return load_spec(owners[name])


def all_specs(spec_dir: str | Path = SPEC_DIR) -> list[DatasetSpec]:
    """The good specs of `spec_dir`; each bad file is logged (use :func:`scan_specs` to get its error)."""
    scan = scan_specs(spec_dir)
    for err in scan.errors:
        log.error("dataset spec skipped:\n%s", err)
    return list(scan.specs)


# ---- python -m tasks spec check -------------------------------------------------------------------
def check(target: str | None, spec_dir: str | Path = SPEC_DIR) -> tuple[list[DatasetSpec], list[SpecError]]:
    """(good specs, errors) of one dataset name, one spec file path, or (target None) the whole folder."""
    if target is None:
        scan = scan_specs(spec_dir)
        return list(scan.specs), list(scan.errors)
    try:
        if target.endswith((".yaml", ".yml")) or "/" in target:
            return [load_spec(target)], []
        return [spec_for(target, spec_dir)], []
    except SpecError as exc:
        return [], [exc]


def cli(argv: list[str], spec_dir: str | Path = SPEC_DIR) -> int:
    """``spec check [NAME | PATH] [--specs DIR]``: print OK or every problem; exit status 1 on any problem."""
    parser = argparse.ArgumentParser(prog="python -m tasks spec", description="Dataset spec tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a spec against the schema (no data is read)")
    p.add_argument("target", nargs="?", help="dataset name or spec file (default: every spec of the folder)")
    p.add_argument("--specs", default=str(spec_dir), help="specs folder (default: %(default)s)")
    args = parser.parse_args(argv)
    specs, errors = check(args.target, args.specs)
    for spec in specs:
        print(f"OK {spec.source}: dataset {spec.name}, {len(spec.columns)} columns, "
              f"fingerprint {spec.fingerprint()}")
    for err in errors:
        print(f"FAILED {err.source}:")
        print("\n".join(f"  {line}" for line in str(err).splitlines()))
    return 1 if errors else 0
