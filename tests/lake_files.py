"""Committed lake files for tests, found the way readers find them: through the commit record's manifest."""

from __future__ import annotations

from pathlib import Path

from tasks.io.lake import Lake


def committed_file(lake_root: str | Path, stage: str, dataset: str, ds: str, rel: str) -> Path:
    """The file of the committed `stage` manifest named `rel`, with or without its ``v=<version>/`` folder
    (``raw/index.html`` of the validation stage lies in ``v=<version>/raw/index.html``)."""
    lake = Lake(str(lake_root))
    m = lake.manifest(stage, dataset, ds, verify=False)
    assert m is not None, f"nothing committed for {stage} {dataset} ds={ds} under {lake_root}"
    for f in m.files:
        if rel in (f.path, f.path.split("/", 1)[-1] if f.path.startswith("v=") else f.path):
            return Path(lake.abspath(m, f))
    raise AssertionError(f"{stage} manifest of {dataset} ds={ds} lists no {rel}: {[f.path for f in m.files]}")


def doc_paths(paths: set[str]) -> set[str]:
    """Manifest paths without their version folder (``v=<version>/raw/index.html`` -> ``raw/index.html``)."""
    return {p.split("/", 1)[1] if p.startswith("v=") else p for p in paths}
