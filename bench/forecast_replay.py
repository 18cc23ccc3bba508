"""Replay the real forecast plans of a `bench/forecast.py` result with and without the adaptive level.

    PYTHONPATH=. .venv/bin/python bench/forecast_replay.py bench/results/forecast.json

Rebuilds each interval's history from the recorded forecast runs (partitions estimated from the input
size, as one raw file per ~6 MB piece), re-plans with `tasks.resources.forecast.make_plan` as the bench does, and
prints how many plans the replay reproduces and where the adaptive quantile level changes the worker
count compared with the fixed configured quantile.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.forecast import REAL_WORKER_MEMORY, real_plan_kwargs
from tasks.resources import forecast

BYTES_PER_FILE = 131e6 / 22  # a 9M-row weekday interval is ~131 MB in 22-23 raw files of 400k rows


def replay(result: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in result["runs"]["real"] if r["policy"] == "forecast"]
    max_workers = result["config"]["real_max_workers"]
    history: list[dict[str, Any]] = []
    matches, changed = 0, []
    for r in runs:
        parts = max(1, round(r["input_bytes"] / BYTES_PER_FILE))
        # only forecast intervals are re-planned, so the heuristic's rate does not matter
        kw = real_plan_kwargs(r["deadline"], max_workers, rate=1.0) | {"partition_bytes": r["input_bytes"] / parts}
        if r["source"] == "forecast":
            adaptive = forecast.make_plan(history, r["input_bytes"], **kw).workers
            fixed_history = [{k: v for k, v in h.items() if k != "predicted_wall_s_upper"} for h in history]
            fixed = forecast.make_plan(fixed_history, r["input_bytes"], **kw).workers
            matches += adaptive == r["workers"]
            if adaptive != fixed:
                changed.append({"interval": r["interval"], "ran": r["workers"], "adaptive": adaptive, "fixed": fixed})
        history.append(dict(success=True, input_bytes=r["input_bytes"], workers=r["workers"], threads=1,
                            wall_s=r["wall_s"], partitions=parts, peak_memory_per_worker=r["peak_memory"],
                            memory_limit=REAL_WORKER_MEMORY,
                            predicted_wall_s_upper=r["predicted_upper"], plan_source=r["source"]))
    planned = sum(r["source"] == "forecast" for r in runs)
    return {"forecast_plans": planned, "replay_matches_run": matches, "adaptive_changes": changed}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(path, json.dumps(replay(json.load(f))))
