"""Dataset specs: the YAML files under dags/datasets/ parsed into typed objects.

A spec is data, not code. Every step (clean, split, validate, train, ...) reads
its rules from here, which is what makes the pipeline dataset-agnostic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml

ColumnType = Literal["string", "int", "float", "bool", "timestamp", "category"]
_TYPES = {"string", "int", "float", "bool", "timestamp", "category"}
SPEC_DIR = Path(__file__).resolve().parent.parent / "dags" / "datasets"


class SpecError(ValueError):
    """A dataset spec is malformed; the message names the file and the field."""


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

    def fingerprint(self) -> str:
        """Stable hash of the spec's content: part of every step's cache key."""
        content = asdict(self)
        content.pop("source")  # where the spec lives is not what it says
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _tuple(v: Any) -> tuple:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(v)


def parse_spec(raw: dict[str, Any], source: str = "<dict>") -> DatasetSpec:
    def need(key: str) -> Any:
        if key not in raw:
            raise SpecError(f"{source}: missing required field {key!r}")
        return raw[key]

    cols_raw = need("columns")
    if not isinstance(cols_raw, dict) or not cols_raw:
        raise SpecError(f"{source}: 'columns' must be a non-empty mapping name -> rules")
    columns = []
    for name, rules in cols_raw.items():
        rules = dict(rules or {})
        ctype = rules.pop("type", None)
        if ctype not in _TYPES:
            raise SpecError(f"{source}: column {name!r} has type {ctype!r}; expected one of {sorted(_TYPES)}")
        if "allowed" in rules:
            rules["allowed"] = tuple(str(a) for a in rules["allowed"])
        try:
            columns.append(ColumnSpec(name=name, type=ctype, **rules))
        except TypeError as exc:
            raise SpecError(f"{source}: column {name!r}: {exc}") from exc
    names = {c.name for c in columns}
    label_raw = need("label")
    label = LabelSpec(**label_raw) if isinstance(label_raw, dict) else LabelSpec(column=str(label_raw))
    feats_raw = dict(raw.get("features") or {})
    features = FeatureSpec(
        numeric=_tuple(feats_raw.get("numeric")),
        categorical=_tuple(feats_raw.get("categorical")),
        derived=dict(feats_raw.get("derived") or {}),
        min_category_count=int(feats_raw.get("min_category_count", 5)),
    )
    spec = DatasetSpec(
        name=str(need("name")),
        columns=tuple(columns),
        time_column=str(need("time_column")),
        key=_tuple(need("key")),
        group_column=str(need("group_column")),
        label=label,
        split=SplitSpec(**(raw.get("split") or {})),
        features=features,
        dedupe_order=_tuple(raw.get("dedupe_order")),
        description=str(raw.get("description", "")),
        schedule=str(raw.get("schedule", "@daily")),
        start_date=str(raw.get("start_date", "2026-11-01")),
        drift={k: float(v) for k, v in (raw.get("drift") or {}).items()},
        row_count={k: int(v) for k, v in (raw.get("row_count") or {}).items()},
        anomaly={k: float(v) for k, v in (raw.get("anomaly") or {}).items()},
        source=source,
    )
    referenced = [spec.time_column, spec.group_column, label.column, *spec.key, *spec.dedupe_order]
    referenced += [f for f in (*features.numeric, *features.categorical) if f not in features.derived]
    for ref in referenced:
        if ref not in names:
            raise SpecError(f"{source}: field refers to unknown column {ref!r}")
    total = spec.split.train + spec.split.val + spec.split.test
    if abs(total - 1.0) > 1e-9:
        raise SpecError(f"{source}: split ratios sum to {total}, expected 1.0")
    return spec


def load_spec(path: str | Path) -> DatasetSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at top level")
    return parse_spec(raw, source=str(path))


def spec_for(name: str, spec_dir: Path = SPEC_DIR) -> DatasetSpec:
    """The spec of dataset `name` from the spec folder."""
    for path in sorted(spec_dir.glob("*.y*ml")):
        spec = load_spec(path)
        if spec.name == name:
            return spec
    raise SpecError(f"no dataset spec named {name!r} in {spec_dir}")


def all_specs(spec_dir: Path = SPEC_DIR) -> list[DatasetSpec]:
    return [load_spec(p) for p in sorted(spec_dir.glob("*.y*ml"))]
