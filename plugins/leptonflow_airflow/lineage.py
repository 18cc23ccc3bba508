"""OpenLineage facets of leptonflow's tasks, for the Airflow OpenLineage provider.

The operators' ``get_openlineage_facets_on_start/complete/failure`` hooks (see
``leptonflow_airflow.operators.OpenLineageMixin``) call :func:`on_start` and :func:`for_step`.
Everything here is built from the step's result (the small JSON its task returns) and the lake's
manifests: no data file is read, only manifests, the Data Docs' ``result.json`` and the published
artifact's manifest. The provider's listener sends the events (``[openlineage] transport``) and
adds the Airflow facets itself: the parent run (the DAG run), the nominal time (the data
interval), the Airflow task and DAG facets and, on failure, the error message.

Datasets are lake interval folders: namespace ``file`` (a local lake) or ``<scheme>://<bucket>``
(an object store), name ``<root>/<stage>/<dataset>/ds=<ds>``; the stage folder holding every
interval is a symlink. Each step reports:

- its inputs and outputs (:data:`STEP_IO`), each with its manifest version, row count, size and
  file count, and for tables (raw, clean, quarantine, split) the spec's schema;
- clean and split outputs: column lineage raw -> clean (-> split) from the spec (normalize,
  clip, map to the unknown value; the row filters and the dedupe as dataset-level lineage);
- validation: the Great Expectations results as data-quality assertions and metrics on the
  validated input;
- publish: the signed model artifact in the artifact store, with its version;
- a ``leptonflow`` run facet: step, interval, cache hit, wall time, the step's canonical
  metrics (bytes read, written, shuffled, workers, ...) and its other scalar results.

The START event only names the step (:func:`on_start`): before the task runner renders the task,
the operator does not know which interval it will process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import attr
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.generated.base import InputDataset, OutputDataset, RunFacet
from openlineage.client.generated.column_lineage_dataset import (
    ColumnLineageDatasetFacet,
    Fields,
    InputField,
    Transformation,
)
from openlineage.client.generated.data_quality_assertions_dataset import Assertion, DataQualityAssertionsDatasetFacet
from openlineage.client.generated.data_quality_metrics_input_dataset import (
    ColumnMetrics,
    DataQualityMetricsInputDatasetFacet,
)
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.input_statistics_input_dataset import InputStatisticsInputDatasetFacet
from openlineage.client.generated.output_statistics_output_dataset import OutputStatisticsOutputDatasetFacet
from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields
from openlineage.client.generated.symlinks_dataset import Identifier, SymlinksDatasetFacet

from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.resources.step_metrics import StepMetrics
from tasks.spec import DatasetSpec

log = logging.getLogger(__name__)

# Which lake stages each step reads and writes (an absent manifest is left out).
STEP_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "validate_raw": (("raw",), ("validation", "quarantine_validation")),
    "plan_clean": (("raw",), ()),
    "clean": (("raw",), ("clean", "quarantine")),
    "split": (("clean",), ("split",)),
    "validate_clean": (("clean", "split"), ("validation",)),
    "secure": (("clean", "quarantine", "quarantine_validation", "split"), ("secure",)),
    "plan_train": (("split",), ()),
    "train": (("split",), ("model",)),
    "evaluate": (("model", "split"), ("evaluation",)),
    "compress": (("model", "split"), ("compressed",)),
    "publish": (("compressed", "model", "evaluation", "validation"), ()),  # + the artifact
}
TABLES = ("raw", "clean", "quarantine", "split")
QUARANTINE_COLUMNS = (("_reason", "string"), ("_source_file", "string"), ("_source_row", "int64"))
VALIDATED = {"validate_raw": ("raw", "raw"), "validate_clean": ("clean", "clean")}  # step: (stage, suite kind)
MAX_SUMMARY_KEYS = 60


@attr.define
class LeptonflowRunFacet(RunFacet):
    """What the step measured and returned: interval, cache hit, wall time, metrics, scalar results."""

    step: str
    dataset: str
    ds: str | None = attr.field(default=None)
    cacheHit: bool | None = attr.field(default=None)  # noqa: N815
    wallSeconds: float | None = attr.field(default=None)  # noqa: N815
    metrics: dict[str, int] = attr.field(factory=dict)
    summary: dict[str, Any] = attr.field(factory=dict)


# ---- names ----------------------------------------------------------------------------------
def location(url: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) of a store URL: ``file`` + the absolute path for local paths,
    ``<scheme>://<bucket>`` + the key for object stores (the OpenLineage naming convention)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file", "local"):
        path = parsed.path if parsed.scheme else url
        return "file", path.rstrip("/") or "/"
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path.strip("/") or "/"


def lake_location(ctx: StepContext, stage: str, ds: str) -> tuple[str, str]:
    lake = ctx.lake
    return location(lake.full_url(lake.interval_dir(stage, ctx.dataset, ds)))


# ---- facets ---------------------------------------------------------------------------------
ARROW_NAMES = {"string": "string", "category": "string", "int": "int64", "float": "double", "bool": "boolean",
               "timestamp": "timestamp[us, tz=UTC]"}


def table_columns(spec: DatasetSpec, stage: str, manifest: Manifest | None) -> list[tuple[str, str, str]]:
    """(name, type, description) of a table stage's columns, from the spec (what clean guarantees)."""
    names = list((manifest.extra.get("schema") if manifest is not None else None) or spec.column_names)
    by_name = {c.name: c for c in spec.columns}
    cols = []
    for name in names:
        c = by_name.get(name)
        if c is None:
            continue
        notes = [c.type] + (["required"] if c.required else []) + (["pii (column-encrypted)"] if c.pii else [])
        cols.append((name, ARROW_NAMES[c.type], ", ".join(notes)))
    if stage == "quarantine":
        cols += [(n, t, "quarantine bookkeeping") for n, t in QUARANTINE_COLUMNS]
    return cols


def schema_facet(cols: list[tuple[str, str, str]]) -> SchemaDatasetFacet:
    return SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=n, type=t, description=d, ordinal_position=i)
                                      for i, (n, t, d) in enumerate(cols, start=1)])


def _num(v: float | None, none: str = "-inf") -> str:
    return none if v is None else f"{v:g}"


def _column_transform(c: Any) -> tuple[str, str]:
    """(subtype, description) of what clean does to one column of the spec."""
    what = []
    if c.normalize != "none":
        what.append(f"normalize {c.normalize}")
    if c.min is not None or c.max is not None:
        bounds = f"[{_num(c.min)}, {_num(c.max, 'inf')}]"
        what.append(f"clip to {bounds}" if c.on_out_of_range == "clip" else f"rows outside {bounds} rejected")
    if c.allowed is not None:
        what.append(f"unknown values -> {c.unknown_value!r}" if c.on_unknown == "map" else "unknown values rejected")
    changes = [w for w in what if "rejected" not in w]
    return ("TRANSFORMATION" if changes else "IDENTITY"), "; ".join(what) or "copied"


def _field(ns: str, name: str, column: str, kind: str, subtype: str, desc: str) -> InputField:
    return InputField(namespace=ns, name=name, field=column,
                      transformations=[Transformation(type=kind, subtype=subtype, description=desc, masking=False)])


def clean_column_lineage(spec: DatasetSpec, src: tuple[str, str], columns: list[str]) -> ColumnLineageDatasetFacet:
    """raw -> clean: each clean column from the raw column of the same name, as the spec transforms it;
    the columns that filter, dedupe and assign rows to splits as dataset-level (indirect) lineage."""
    ns, name = src
    by_name = {c.name: c for c in spec.columns}
    fields = {}
    for col in (c for c in columns if c in by_name):
        subtype, desc = _column_transform(by_name[col])
        fields[col] = Fields(inputFields=[_field(ns, name, col, "DIRECT", subtype, desc)],
                             transformationDescription=desc, transformationType=subtype)
    indirect = [_field(ns, name, c, "INDIRECT", "FILTER", "rows missing this required value are quarantined")
                for c in spec.required]
    indirect += [_field(ns, name, c.name, "INDIRECT", "FILTER",
                        f"rows outside [{_num(c.min)}, {_num(c.max, 'inf')}] are quarantined")
                 for c in spec.columns if (c.min is not None or c.max is not None) and c.on_out_of_range == "reject"]
    indirect += [_field(ns, name, c.name, "INDIRECT", "FILTER", "rows with a value outside the allowed set are "
                        "quarantined") for c in spec.columns if c.allowed is not None and c.on_unknown == "reject"]
    indirect.append(_field(ns, name, spec.time_column, "INDIRECT", "FILTER", "rows outside the data interval are "
                           "quarantined"))
    indirect += [_field(ns, name, c, "INDIRECT", "FILTER", "dedupe key: one row per key survives") for c in spec.key]
    indirect += [_field(ns, name, c, "INDIRECT", "SORT", "dedupe order: the smallest row survives")
                 for c in spec.dedupe_order]
    indirect.append(_field(ns, name, spec.group_column, "INDIRECT", "CONDITIONAL",
                           "split assignment (train/val/test) by a hash of this column"))
    return ColumnLineageDatasetFacet(fields=fields, dataset=indirect)


def identity_column_lineage(src: tuple[str, str], columns: list[str]) -> ColumnLineageDatasetFacet:
    ns, name = src
    return ColumnLineageDatasetFacet(fields={
        c: Fields(inputFields=[_field(ns, name, c, "DIRECT", "IDENTITY", "copied")], transformationType="IDENTITY")
        for c in columns})


def _jsonish(v: Any, limit: int = 500) -> str | None:
    if v is None:
        return None
    text = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
    return text[:limit]


def quality_facets(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Data-quality assertions (one per expectation) and metrics (row count, null counts) of a GX result."""
    assertions, nulls, rows = [], {}, None
    for r in doc.get("results", []):
        cfg, res = r.get("expectation_config") or {}, r.get("result") or {}
        kw = dict(cfg.get("kwargs") or {})
        column = kw.pop("column", None)
        if column is None and "column_list" in kw:
            column = ",".join(kw.pop("column_list"))
        actual = res.get("observed_value", res.get("unexpected_count"))
        assertions.append(Assertion(assertion=cfg.get("type", "?"), success=bool(r.get("success")),
                                    column=column, severity="error", expected=_jsonish(kw), actual=_jsonish(actual)))
        if cfg.get("type") == "expect_column_values_to_not_be_null" and column and "unexpected_count" in res:
            nulls[column] = ColumnMetrics(nullCount=int(res["unexpected_count"]), count=res.get("element_count"))
        if cfg.get("type") == "expect_table_row_count_to_be_between" and isinstance(res.get("observed_value"), int):
            rows = res["observed_value"]
    meta = (doc.get("meta") or {}).get("leptonflow") or {}
    return {"dataQualityAssertions": DataQualityAssertionsDatasetFacet(assertions=assertions),
            "dataQualityMetrics": DataQualityMetricsInputDatasetFacet(
                columnMetrics=nulls, rowCount=rows if rows is not None else meta.get("rows_validated"),
                fileCount=meta.get("files"))}


def run_facet(step: str, dataset: str, ds: str | None, result: Mapping[str, Any] | None) -> LeptonflowRunFacet:
    result = result or {}
    try:
        metrics = {k: v for k, v in StepMetrics.from_result(result, step).to_json().items() if v}
    except ValueError:
        metrics = {}
    summary: dict[str, Any] = {}
    for key, value in result.items():
        if key in metrics or key in ("wall_s", "cache_hit", "ds"):
            continue
        items = value.items() if isinstance(value, Mapping) else [("", value)]
        for sub, v in items:
            if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 300) or v is None:
                summary[f"{key}.{sub}" if sub else key] = v
    keys = sorted(summary)[:MAX_SUMMARY_KEYS]
    return LeptonflowRunFacet(step=step, dataset=dataset, ds=ds or result.get("ds"),
                              cacheHit=result.get("cache_hit"), wallSeconds=result.get("wall_s"),
                              metrics=metrics, summary={k: summary[k] for k in keys})


# ---- datasets -------------------------------------------------------------------------------
class _Stage:
    """One lake interval of one stage as this step sees it: its manifest (none for raw) and sizes."""

    def __init__(self, ctx: StepContext, stage: str, ds: str) -> None:
        self.ctx, self.stage, self.ds = ctx, stage, ds
        self.ns, self.name = lake_location(ctx, stage, ds)
        self.manifest = None if stage == "raw" else ctx.lake.manifest(stage, ctx.dataset, ds)
        if self.manifest is not None:
            self.files = len(self.manifest.files)
            self.bytes = sum(f.bytes for f in self.manifest.files)
            self.rows: int | None = self.manifest.rows or None
        else:
            self.files, self.bytes, self.rows = self._listing()

    def _listing(self) -> tuple[int, int, int | None]:
        if self.stage != "raw":
            return 0, 0, None
        lake = self.ctx.lake
        d = lake.interval_dir("raw", self.ctx.dataset, self.ds)
        found = lake.fs.find(d, detail=True) if lake.fs.exists(d) else {}
        sizes = [int(info.get("size") or 0) for p, info in found.items() if p.endswith(".parquet")]
        return len(sizes), sum(sizes), None

    @property
    def exists(self) -> bool:
        return self.manifest is not None or (self.stage == "raw" and self.files > 0)

    def columns(self) -> list[tuple[str, str, str]]:
        return table_columns(self.ctx.spec, self.stage, self.manifest) if self.stage in TABLES else []

    def facets(self) -> dict[str, Any]:
        lake = self.ctx.lake
        _, stage_dir = location(lake.full_url(lake.dataset_dir(self.stage, self.ctx.dataset)))
        out: dict[str, Any] = {"symlinks": SymlinksDatasetFacet(identifiers=[
            Identifier(namespace=self.ns, name=stage_dir, type="DIRECTORY")])}
        if self.manifest is not None:
            out["version"] = DatasetVersionDatasetFacet(datasetVersion=self.manifest.version)
        cols = self.columns()
        if cols:
            out["schema"] = schema_facet(cols)
        return out

    def as_input(self, extra: Mapping[str, Any] | None = None, rows: int | None = None) -> InputDataset:
        facets = {"inputStatistics": InputStatisticsInputDatasetFacet(
            rowCount=self.rows if self.rows is not None else rows, size=self.bytes, fileCount=self.files),
            **(extra or {})}
        return InputDataset(namespace=self.ns, name=self.name, facets=self.facets(), inputFacets=facets)

    def as_output(self, extra: Mapping[str, Any] | None = None) -> OutputDataset:
        return OutputDataset(namespace=self.ns, name=self.name, facets={**self.facets(), **(extra or {})},
                             outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(
                                 rowCount=self.rows, size=self.bytes, fileCount=self.files)})


def _gx_result(ctx: StepContext, kind: str) -> dict[str, Any] | None:
    """The GX result JSON the validation step committed for `kind` (checked against its manifest)."""
    from tasks.io import verified

    m = ctx.lake.manifest("validation", ctx.dataset, ctx.ds)
    name = f"{kind}/result.json"
    entry = next((f for f in (m.files if m else []) if f.path == name or f.path.endswith(f"/{name}")), None)
    if entry is None:
        return None
    return json.loads(verified.read_bytes(ctx.lake, m, entry))


def _artifact(ctx: StepContext, result: Mapping[str, Any]) -> OutputDataset | None:
    """The published model: the artifact store's ``models/<name>`` with the version just published."""
    import fsspec

    from tasks.publishing.publish import MANIFEST

    url, version = result.get("artifact_url"), result.get("version")
    if not url or not version:
        return None
    ns, name = location(str(url))
    fs, root = fsspec.core.url_to_fs(str(url), **(ctx.artifacts_options or {}))
    doc = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST}"))
    files = doc.get("files") or {}
    spec = ctx.spec
    cols = [(c, "double", "numeric feature") for c in spec.features.numeric]
    cols += [(c, "string", "categorical feature") for c in spec.features.categorical]
    cols.append(("prediction", "double", f"{spec.label.task} output for {spec.label.column}"))
    base = name.rsplit("/", 1)[0] if name.endswith(f"/{version}") else name
    return OutputDataset(
        namespace=ns, name=base,
        facets={"version": DatasetVersionDatasetFacet(datasetVersion=str(version)), "schema": schema_facet(cols),
                "symlinks": SymlinksDatasetFacet(identifiers=[Identifier(namespace=ns, name=name, type="DIRECTORY")])},
        outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(
            size=sum(int(f.get("bytes") or 0) for f in files.values()), fileCount=len(files) + 1)})


# ---- the hooks' answers ---------------------------------------------------------------------
def on_start(step: str, dataset: str) -> OperatorLineage:
    """START: the step's identity (datasets come with COMPLETE/FAIL, once the interval is known)."""
    return OperatorLineage(run_facets={"leptonflow": LeptonflowRunFacet(step=step, dataset=dataset)})


def for_step(step: str, dataset: str, ctx: StepContext | None, result: Mapping[str, Any] | None,
             failed: bool = False, since: float | None = None) -> OperatorLineage:
    """COMPLETE (`failed` False) or FAIL: inputs, outputs and run facet of `step` for `ctx`'s interval.

    On failure `result` is None and only outputs committed since `since` (the task's start, epoch
    seconds) are reported: the Data Docs of a failed validation are, a stale earlier commit is not.
    """
    if ctx is None:  # failed before it knew its interval
        return on_start(step, dataset)
    result = result or {}
    ins, outs = STEP_IO.get(step, ((), ()))
    inputs = []
    sources: dict[str, _Stage] = {}
    validated = VALIDATED.get(step)
    for stage in ins:
        s = _Stage(ctx, stage, ctx.ds)
        if not s.exists:
            continue
        sources[stage] = s
        extra = {}
        if validated and validated[0] == stage:
            doc = _gx_result(ctx, validated[1])
            extra = quality_facets(doc) if doc else {}
        inputs.append(s.as_input(extra, rows=result.get("input_rows") or None))
    previous = (result.get("drift") or {}).get("previous_ds") if step == "validate_clean" else None
    if previous:  # the drift baseline
        inputs.append(_Stage(ctx, "clean", str(previous)).as_input())
    outputs = []
    for stage in outs:
        s = _Stage(ctx, stage, ctx.ds)
        if not s.exists or (failed and since is not None and s.manifest is not None and s.manifest.created_at < since):
            continue
        extra = {}
        cols = [c[0] for c in s.columns()]
        if stage == "clean" and "raw" in sources:
            extra["columnLineage"] = clean_column_lineage(ctx.spec, (sources["raw"].ns, sources["raw"].name), cols)
        elif stage == "split" and "clean" in sources:
            extra["columnLineage"] = identity_column_lineage((sources["clean"].ns, sources["clean"].name), cols)
        outputs.append(s.as_output(extra))
    if step == "publish" and not failed:
        artifact = _artifact(ctx, result)
        if artifact is not None:
            outputs.append(artifact)
    return OperatorLineage(inputs=inputs, outputs=outputs,
                           run_facets={"leptonflow": run_facet(step, dataset, ctx.ds, result)})
