"""Every setting of the pipeline, declared once.

A :class:`Setting` is declared here and nowhere else. From the declaration come the
DAG's trigger-form Params (:func:`airflow_param_kwargs`: typed, bounded, grouped by
section, documented), the CLI flags of ``python -m tasks <step>`` (:func:`add_cli_flags`),
the typed value a step reads (``ctx.param(name)``, via :func:`resolve`), and the cache key
of each cached step (:func:`cache_params`: the output-affecting settings that the step's
code reads, found in its source, so the key cannot miss one).

Dataset-level defaults come from the dataset spec (``spec_default``: e.g. a spec's
``anomaly.max_rate`` is the default of ``anomaly_max_rate`` for that dataset) and are
resolved here, in :func:`defaults`.

``python -m tasks params`` lists the settings (:mod:`tasks.steps` adds which steps read each).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from tasks.errors import SettingError

TYPES = ("boolean", "integer", "number", "string", "array")
SECTIONS = ("Data", "Cleaning", "Validation", "Security", "Resources", "Training", "Evaluation", "Compression",
            "Publishing")


@dataclass(frozen=True)
class Setting:
    """One setting: its name, type, default, bounds, section, one-line doc, and whether it changes output.

    `affects_output`: changing it changes what a step writes, so it is part of the cache key of
    every step that reads it. `nullable`: ``None`` is a valid value (it means "derive it": the doc
    says from what). `spec_default`: the key in the dataset spec whose value replaces `default`
    for that dataset (``"anomaly.max_rate"``). `items`: the element type of an array setting;
    `enum` applies to the value, or to each element of an array.
    """

    name: str
    type: str
    default: Any
    section: str
    doc: str
    affects_output: bool = True
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    enum: tuple[Any, ...] | None = None
    items: str | None = None
    spec_default: str | None = None
    format: str | None = None

    def coerce(self, value: Any) -> Any:
        """`value` as this setting's type, checked against its bounds; SettingError names the setting."""
        blank = isinstance(value, str) and value.strip().lower() in ("", "none", "null")
        if value is None or (self.nullable and blank):
            if self.nullable:
                return None
            raise SettingError(self.name, "must not be null")
        if self.type == "array":
            return [self._check(self._scalar(v, self.items or "string")) for v in self._as_list(value)]
        return self._check(self._scalar(value, self.type))

    def _as_list(self, value: Any) -> list[Any]:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise SettingError(self.name, f"is not a JSON list: {exc}") from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise SettingError(self.name, f"must be a list, got {value!r}")
        return list(value)

    def _scalar(self, value: Any, kind: str) -> Any:
        try:
            if kind == "boolean":
                return _to_bool(value)
            if kind == "integer":
                return _to_int(value)
            if kind == "number":
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if kind == "string":
                if isinstance(value, int) and not isinstance(value, bool):
                    return str(value)  # e.g. hidden: 128 from a JSON form or an older Param
                if not isinstance(value, str):
                    raise ValueError
                return value
        except (TypeError, ValueError):
            raise SettingError(self.name, f"must be {_ARTICLE[kind]}, got {value!r}") from None
        raise SettingError(self.name, f"has an unknown type {kind!r}")

    def _check(self, value: Any) -> Any:
        if self.enum is not None and value not in self.enum:
            raise SettingError(self.name, f"must be one of {', '.join(map(str, self.enum))}; got {value!r}")
        if self.minimum is not None and isinstance(value, int | float):
            if value < self.minimum or (self.exclusive_minimum and value == self.minimum):
                relation = ">" if self.exclusive_minimum else ">="
                raise SettingError(self.name, f"must be {relation} {self.minimum:g}, got {value!r}")
        if self.maximum is not None and isinstance(value, int | float) and value > self.maximum:
            raise SettingError(self.name, f"must be <= {self.maximum:g}, got {value!r}")
        return value

    def schema(self) -> dict[str, Any]:
        """The JSON-schema keywords of this setting (what an Airflow Param validates)."""
        out: dict[str, Any] = {"type": ["null", self.type] if self.nullable else self.type}
        target = out
        if self.type == "array":
            out["items"] = target = {"type": self.items or "string"}
        if self.enum is not None:
            target["enum"] = list(self.enum)
        if self.minimum is not None:
            target["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            target["maximum"] = self.maximum
        if self.format:
            out["format"] = self.format
        return out


_ARTICLE = {"boolean": "true or false", "integer": "an integer", "number": "a number", "string": "a string"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError


_MiB = 1 << 20
S = Setting
SETTINGS: tuple[Setting, ...] = (
    # ---- Data
    S("interval_date", "string", None, "Data", "Process this interval start (YYYY-MM-DD) instead of the run's data "
      "interval (trigger form and DAG runs; the CLI takes --ds).", affects_output=False, nullable=True, format="date"),
    S("rerun", "string", None, "Data", "Free tag: a new value forces every cached step to recompute.",
      nullable=True),
    # ---- Cleaning
    S("chunk_rows", "integer", 1 << 20, "Cleaning", "Rows per clean map task (whole row groups).", minimum=1),
    S("partitions", "integer", 0, "Cleaning", "Dedupe buckets (= output files per split); 0 sizes them from "
      "target_file_bytes.", minimum=0, maximum=100_000),
    S("target_file_bytes", "integer", 128 * _MiB, "Cleaning", "Bytes an output file aims at when partitions is 0.",
      minimum=1 << 16),
    S("shuffle_compression", "string", "none", "Cleaning", "Compression of the clean step's shuffle files "
      "(smaller exchange, more CPU).", affects_output=False, enum=("none", "lz4", "zstd")),
    # ---- Validation
    S("validation_policy", "string", "fail", "Validation", "On failed expectations: fail the run, warn and go on, or "
      "quarantine the offending rows.", enum=("fail", "warn", "quarantine")),
    S("gx_data_docs", "boolean", False, "Validation", "Also render Great Expectations' own Data Docs page "
      "(slower; the leptonflow page is always written)."),
    # ---- Security
    S("encrypt", "boolean", True, "Security", "Parquet Modular Encryption of clean, quarantine and split files "
      "(PII columns under their own key)."),
    S("anomaly_check", "boolean", True, "Security", "Score clean rows with an IsolationForest fitted on earlier "
      "intervals; quarantine outliers."),
    S("anomaly_policy", "string", "fail", "Security", "When the interval's anomaly rate exceeds anomaly_max_rate: "
      "fail the run or warn.", enum=("fail", "warn")),
    S("anomaly_max_rate", "number", 0.05, "Security", "Highest tolerated share of rows scored anomalous "
      "(default: the spec's anomaly.max_rate).", minimum=0, maximum=1, spec_default="anomaly.max_rate"),
    S("anomaly_contamination", "number", 0.01, "Security", "IsolationForest contamination: the share of history "
      "rows taken as outliers (default: the spec's anomaly.contamination).", minimum=0, maximum=0.5,
      exclusive_minimum=True, spec_default="anomaly.contamination"),
    S("anomaly_history_intervals", "integer", 7, "Security", "Earlier intervals the anomaly model is fitted on.",
      minimum=1, maximum=366),
    S("anomaly_history_rows", "integer", 100_000, "Security", "Rows sampled from those intervals to fit on.",
      minimum=1),
    S("anomaly_row_groups_per_interval", "integer", 8, "Security", "Row groups sampled per history interval.",
      minimum=1),
    S("anomaly_min_history_rows", "integer", 500, "Security", "Fewest history rows to fit a model; fewer: no "
      "anomaly check for this interval.", minimum=1),
    S("anomaly_sample_rows", "integer", 200_000, "Security", "Rows the secure step rescores to confirm the "
      "anomaly rate of a sealed interval.", minimum=1),
    S("anomaly_sample_row_groups", "integer", 32, "Security", "Row groups the secure step samples from.",
      minimum=1),
    # ---- Resources
    S("deadline_s", "number", 600, "Resources", "Deadline per heavy step (seconds): the forecast picks the smallest "
      "cluster that meets it.", affects_output=False, minimum=1, maximum=7 * 86400),
    S("clean_deadline_s", "number", None, "Resources", "Deadline of the clean step (default: deadline_s).",
      affects_output=False, nullable=True, minimum=1, maximum=7 * 86400),
    S("train_deadline_s", "number", None, "Resources", "Deadline of the train step (default: deadline_s).",
      affects_output=False, nullable=True, minimum=1, maximum=7 * 86400),
    S("min_workers", "integer", 1, "Resources", "Fewest Dask workers (training processes) a plan may ask for.",
      affects_output=False, minimum=1, maximum=10_000),
    S("max_workers", "integer", None, "Resources", "Most Dask workers (training processes) a plan may ask for "
      "(default: the cluster backend's max_workers, else 8; training: the GPUs, else up to 4 processes).",
      affects_output=False, nullable=True, minimum=1, maximum=10_000),
    S("threads_per_worker", "integer", 1, "Resources", "Threads per Dask worker in a plan.", affects_output=False,
      minimum=1, maximum=256),
    S("memory_per_worker", "integer", None, "Resources", "Memory of a worker in bytes (default: the cluster "
      "backend's worker_memory, else 2 GiB).", affects_output=False, nullable=True, minimum=1 << 26),
    S("partition_bytes", "integer", 64 * _MiB, "Resources", "Bytes per task assumed when the input is not landed "
      "yet.", affects_output=False, minimum=1),
    S("min_history", "integer", 5, "Resources", "Recorded runs needed before the forecast model replaces the "
      "heuristic.", affects_output=False, minimum=1),
    S("forecast_quantile", "number", 0.9, "Resources", "Quantile of the predicted wall time that must meet the "
      "deadline.", affects_output=False, minimum=0.5, maximum=0.999),
    S("forecast_memory_quantile", "number", None, "Resources", "Quantile of the predicted peak memory that must fit "
      "(default: forecast_quantile).", affects_output=False, nullable=True, minimum=0.5, maximum=0.999),
    S("heuristic_bytes_per_s", "number", 16 * _MiB, "Resources", "Throughput per worker thread the no-history "
      "heuristic assumes (input bytes per second).", affects_output=False, exclusive_minimum=True, minimum=0),
    S("heuristic_overhead_s", "number", 10.0, "Resources", "Fixed seconds per step the no-history heuristic "
      "assumes.", affects_output=False, minimum=0),
    S("memory_fraction", "number", 0.7, "Resources", "Share of worker memory a plan may fill (Dask's spill "
      "threshold).", affects_output=False, exclusive_minimum=True, minimum=0, maximum=1),
    S("fallback_tolerance", "number", 0.1, "Resources", "When no size meets the deadline: accept this much more "
      "wall time than the fastest size for fewer workers.", affects_output=False, minimum=0, maximum=10),
    S("train_nproc", "integer", None, "Resources", "Training processes (default: from the forecast plan).",
      affects_output=False, nullable=True, minimum=1, maximum=1024),
    # ---- Training
    S("epochs", "integer", 3, "Training", "Fewest training epochs (more when min_steps needs them; early "
      "stopping may end sooner).", minimum=1, maximum=10_000),
    S("batch_size", "integer", 1024, "Training", "Largest global batch size, split over the training processes "
      "(lowered to train rows / min_epoch_steps, not below 32, when the split is small).", minimum=1,
      maximum=1_000_000),
    S("min_steps", "integer", 1000, "Training", "Fewest optimizer steps of a run: epochs are added until it is "
      "reached, and early stopping waits for it (0: epochs only).", minimum=0, maximum=10_000_000),
    S("min_epoch_steps", "integer", 16, "Training", "Fewest optimizer steps per epoch: the batch is lowered to "
      "train rows / this.", minimum=1, maximum=100_000),
    S("lr", "number", 0.003, "Training", "Peak learning rate (AdamW).", exclusive_minimum=True, minimum=0,
      maximum=10),
    S("lr_schedule", "string", "cosine", "Training", "Learning rate after warmup: cosine decay to 0 at the last "
      "planned step, or constant.", enum=("cosine", "constant")),
    S("warmup_fraction", "number", 0.05, "Training", "Share of the planned optimizer steps with a linear "
      "learning-rate warmup.", minimum=0, maximum=0.5),
    S("hidden", "string", "128", "Training", "Hidden layer widths, comma-separated (e.g. 128 or 64,32)."),
    S("dropout", "number", 0.3, "Training", "Dropout after each hidden layer.", minimum=0, maximum=0.95),
    S("weight_decay", "number", 0.3, "Training", "AdamW (decoupled) weight decay.", minimum=0, maximum=1),
    S("patience", "integer", 2, "Training", "Early stopping: epochs without validation improvement, counted once "
      "min_steps are done (0: off).", minimum=0, maximum=1000),
    S("seed", "integer", 42, "Training", "Random seed of training and compression fine-tuning.", minimum=0),
    S("checkpoint_every", "integer", 200, "Training", "Optimizer steps between checkpoints (resume point).",
      affects_output=False, minimum=1),
    S("train_workers", "integer", None, "Training", "DataLoader worker processes per rank (default: 0 on CPU, up "
      "to 4 per GPU).", affects_output=False, nullable=True, minimum=0, maximum=64),
    S("shuffle_rows", "integer", 65536, "Training", "Rows of the streaming shuffle buffer.", minimum=1),
    S("log_every", "integer", 50, "Training", "Optimizer steps between progress log lines.", affects_output=False,
      minimum=1),
    # ---- Evaluation
    S("eval_batch_size", "integer", 8192, "Evaluation", "Rows per batch when scoring the test split.", minimum=1),
    S("calibration_bins", "integer", 10, "Evaluation", "Bins of the calibration table and expected calibration "
      "error.", minimum=2, maximum=1000),
    S("baseline_max_rows", "integer", 100_000, "Evaluation", "Train rows (a uniform sample) the linear baseline "
      "(logistic or ridge regression) is fitted on.", minimum=10, maximum=10_000_000),
    S("baseline_tolerance", "number", 0.15, "Evaluation", "Publish gate: the model must beat the trivial "
      "predictor, and its error (RMSE, or 1 - AUC) may exceed the linear baseline's by at most this fraction.",
      minimum=0, maximum=10),
    # ---- Compression
    S("compress_budget", "number", 0.01, "Compression", "Largest tolerated drop of the primary metric (AUC for "
      "classification) of the compressed model.", minimum=0, maximum=1),
    S("compress_ratios", "array", [0.0, 0.25, 0.5, 0.75], "Compression", "Pruning ratios tried.", items="number",
      minimum=0, maximum=0.99),
    S("compress_backends", "array", ["fp32-onnx", "int8-onnx", "int8-static-onnx"], "Compression",
      "Serving variants tried, all ONNX run by onnxruntime: float, int8 dynamic, int8 static (calibrated); "
      "fp32-onnx and the PyTorch reference fp32-torch are always measured.", items="string",
      enum=("fp32-torch", "fp32-onnx", "int8-onnx", "int8-static-onnx")),
    S("compress_finetune_epochs", "integer", 2, "Compression", "Fine-tuning epochs after pruning.", minimum=0,
      maximum=1000),
    S("compress_max_train_rows", "integer", 200_000, "Compression", "Train rows read for fine-tuning.", minimum=1),
    S("compress_max_eval_rows", "integer", 500_000, "Compression", "Validation/test rows read to score candidates.",
      minimum=1),
    S("compress_latency_repeats", "integer", 30, "Compression", "Timed repeats per candidate at batch 256 "
      "(batch 1: ten times as many) for its p50/p99 latency.", minimum=1, maximum=10_000),
    S("compress_calibration_rows", "integer", 2048, "Compression", "Train rows sampled to calibrate the "
      "activation ranges of static int8 quantization.", minimum=1, maximum=1_000_000),
    # ---- Publishing
    S("model_name", "string", None, "Publishing", "Name the model is published under (default: the dataset's "
      "name).", nullable=True),
)
del S
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
ALWAYS_IN_KEY = ("rerun",)  # part of every cached step's key, whether the step reads it or not


def get(name: str) -> Setting:
    """The declaration of `name`; SettingError lists the known names when there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise SettingError(name, "is not a leptonflow setting (python -m tasks params lists them)") from None


def defaults(spec: Any = None) -> dict[str, Any]:
    """Every setting's default, with the dataset spec's values where a setting takes its default from it."""
    out = {s.name: s.default for s in SETTINGS}
    for s in SETTINGS:
        if s.spec_default and spec is not None:
            section, _, key = s.spec_default.partition(".")
            value = (getattr(spec, section, None) or {}).get(key)
            if value is not None:
                out[s.name] = s.coerce(value)
    return out


def resolve(overrides: Mapping[str, Any] | None = None, spec: Any = None) -> dict[str, Any]:
    """Every setting's typed value: `overrides` (Params, CLI flags) over the spec's and the declared defaults.

    An override of ``None`` for a setting that is not nullable means "the default" (the trigger
    form sends a cleared field as null). Unknown names are an error.
    """
    values = defaults(spec)
    for name, value in (overrides or {}).items():
        setting = get(name)
        if value is None and not setting.nullable:
            continue
        values[name] = setting.coerce(value)
    return values


# ---- which settings a step reads ------------------------------------------------------------

def _reads(source: str) -> set[str]:
    """Setting names read in `source` as ``<x>.param("name")``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "param"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


@cache
def settings_read_by(module: str) -> tuple[str, ...]:
    """The settings `module` and every ``tasks`` module it imports read, found in their source."""
    from tasks.io.code_version import imported_modules, source_path

    names: set[str] = set()
    for name in imported_modules(module):
        names |= _reads(source_path(name).read_text())
    return tuple(sorted(names))


def cache_params(module: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The cache-key part of a step's settings: the output-affecting ones its code reads, as resolved."""
    names = sorted({*settings_read_by(module), *ALWAYS_IN_KEY})
    return {n: values[n] for n in names if get(n).affects_output}


# ---- the Airflow trigger form and the CLI ----------------------------------------------------

def airflow_param_kwargs(spec: Any = None) -> dict[str, dict[str, Any]]:
    """name -> keyword arguments of ``airflow.sdk.Param`` (default, schema, section, description)."""
    values = defaults(spec)
    return {s.name: {"default": values[s.name], **s.schema(), "section": s.section, "description": s.doc}
            for s in SETTINGS}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_cli_flags(parser: Any, names: tuple[str, ...] | None = None) -> None:
    """One ``--flag`` per setting (``--no-flag`` for booleans), grouped by section; values stay strings.

    The parsed values are checked by :func:`resolve` (one place for types and bounds). Only flags
    the user gave are set: a flag left out takes the declared default.
    """
    import argparse

    chosen = [s for s in SETTINGS if names is None or s.name in names]
    for section in SECTIONS:
        group = parser.add_argument_group(f"{section} settings")
        for s in (s for s in chosen if s.section == section):
            default = "derived" if s.default is None else json.dumps(s.default)
            help_ = f"{s.doc} [{s.type}, default {default}]".replace("%", "%%")
            if s.type == "boolean":
                group.add_argument(flag(s.name), dest=f"setting_{s.name}", action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_)
            else:
                group.add_argument(flag(s.name), dest=f"setting_{s.name}", default=argparse.SUPPRESS, help=help_,
                                   metavar=s.type.upper())


def cli_overrides(args: Any) -> dict[str, Any]:
    """The settings given as flags on a parsed command line."""
    prefix = "setting_"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
