"""What a heavy step measured about its own run, under one name per quantity.

Every heavy step (``validate_raw``, ``clean``, ``split``, ``validate_clean``, ``train``) builds a
:class:`StepMetrics` and puts its fields at the top level of its result (``{**other,
**metrics.to_json()}``), so the XCom, the CLI's output and the run history use the same names.
:func:`tasks.steps.run_step` reads them back with :meth:`StepMetrics.from_result` and hands the
object to :func:`tasks.resources.history.record_step`; the forecaster learns from what that stores.

A quantity a step does not measure stays 0 ("none" or "not measured"): splitting hard-links files,
so it reads, writes and shuffles no bytes; a step that does not run on a cluster has 0 workers, and
the run history then takes the cluster size from the step's plan.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """The measured part of a heavy step's result. Sizes are in bytes, counts are plain integers."""

    input_bytes: int = 0  # size of the step's input files (what the forecaster sizes clusters by)
    input_rows: int = 0
    output_rows: int = 0  # rows the step committed (clean: clean rows; quarantined rows are not output)
    bytes_read: int = 0  # bytes read from the lake
    bytes_written: int = 0  # bytes written to the lake
    bytes_shuffled: int = 0  # bytes moved between worker processes
    partitions: int = 0  # tasks per phase
    workers: int = 0  # processes that ran the step: Dask workers, or training ranks
    threads_per_worker: int = 0
    memory_limit: int = 0  # per worker
    peak_memory_per_worker: int = 0
    spilled_bytes: int = 0  # most bytes held on disk at once, all workers together

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The canonical field names, in order."""
        return tuple(f.name for f in fields(cls))

    def to_json(self) -> dict[str, int]:
        """The fields as a JSON-ready dict, to merge into a step's result."""
        return asdict(self)

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None, step: str = "step") -> StepMetrics:
        """The metrics in a step's result (its top-level canonical keys; a missing or null one is 0).

        Raises:
            ValueError: a canonical key holds something that is not a finite, non-negative number
                (the message names the step and the key).
        """
        result = result or {}
        values: dict[str, int] = {}
        for name in cls.names():
            value = result.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{step} result: {name!r} must be a finite number >= 0, got {value!r}")
            values[name] = int(round(value))
        return cls(**values)


def cluster_metrics(size: Mapping[str, Any]) -> dict[str, int]:
    """``workers``, ``threads_per_worker`` and ``memory_limit`` (per worker) from a cluster's totals,
    as :func:`tasks.resources.cluster.describe` reports them (threads and memory summed over workers)."""
    workers = int(size.get("workers") or 0)
    if not workers:
        return {"workers": 0, "threads_per_worker": 0, "memory_limit": 0}
    return {"workers": workers, "threads_per_worker": max(1, round(int(size.get("threads") or 0) / workers)),
            "memory_limit": int(size.get("memory_limit") or 0) // workers}
