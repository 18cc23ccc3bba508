"""Atomic, verifiable training checkpoints under the lake, and the rules for resuming.

Layout of a checkpoint folder (``<lake>/model/<dataset>/ds=<ds>/checkpoints/``)::

    ckpt-000001200.pt   torch.save of a dict of tensors and plain types (weights_only-safe)
    ckpt-000001400.pt
    latest.json         {"run_key", "checkpoints": [{"file", "step", "sha256", "bytes"}, ...]} newest last

Every file is written to a temporary name and renamed (a single PUT on object
stores), and ``latest.json`` is replaced only after the checkpoint it names is
complete, so a crash at any moment leaves the previous checkpoint usable.

Resume rules:

* no ``latest.json``: nothing to resume, start fresh (warning);
* ``run_key`` differs (other input, params or code): start fresh and delete the
  stale checkpoints (info);
* the newest checkpoint fails its sha256 or cannot be loaded: it is renamed to
  ``*.corrupt`` with an error naming the file, and the previous one is tried;
  with none usable, start fresh (warning). Training is deterministic from its
  seed, so restarting loses time, never correctness.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import fsspec
import torch

from tasks.errors import LeptonflowError
from tasks.io.lake import is_local, write_atomic

log = logging.getLogger(__name__)

LATEST = "latest.json"
KEEP = 2  # checkpoints kept: the newest and one fallback


class CheckpointError(LeptonflowError, RuntimeError):
    """A checkpoint cannot be written; the message names the file."""


class CheckpointStore:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.path = self.path.rstrip("/")
        self.local = is_local(self.fs)

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _write_atomic(self, name: str, data: bytes) -> None:
        self.fs.makedirs(self.path, exist_ok=True)
        write_atomic(self.fs, self._p(name), data, self.local)

    def _index(self) -> dict[str, Any] | None:
        path = self._p(LATEST)
        if not self.fs.exists(path):
            return None
        try:
            index = json.loads(self.fs.cat_file(path))
            if not isinstance(index.get("checkpoints"), list):
                raise ValueError("no 'checkpoints' list")
            return index
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("checkpoint index %s is unreadable (%s); ignoring it", path, exc)
            return None

    def save(self, payload: dict[str, Any], step: int, run_key: str) -> str:
        """Write one checkpoint and make it the newest; returns its file name."""
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        name = f"ckpt-{step:09d}.pt"
        try:
            self._write_atomic(name, data)
            index = self._index()
            entries = [] if index is None or index.get("run_key") != run_key else index["checkpoints"]
            entries = [e for e in entries if e["file"] != name]
            entries.append({"file": name, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
            keep, drop = entries[-KEEP:], entries[:-KEEP]
            self._write_atomic(LATEST, json.dumps({"run_key": run_key, "checkpoints": keep}, indent=1).encode())
        except OSError as exc:
            raise CheckpointError(f"{self._p(name)}: cannot write checkpoint: {exc}") from exc
        for e in drop:
            self._remove(e["file"])
        log.info("checkpoint %s written (step %d, %d bytes)", self._p(name), step, len(data))
        return name

    def _remove(self, name: str) -> None:
        try:
            self.fs.rm(self._p(name))
        except FileNotFoundError:
            pass

    def _quarantine(self, name: str) -> None:
        try:
            self.fs.mv(self._p(name), self._p(name + ".corrupt"))
        except (FileNotFoundError, OSError):
            log.warning("could not move aside corrupt checkpoint %s", self._p(name))

    def load(self, run_key: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest usable checkpoint of `run_key`, or None (then training starts fresh)."""
        index = self._index()
        if index is None:
            log.warning("no checkpoint under %s: training starts fresh", self.url)
            return None
        if index.get("run_key") != run_key:
            log.info("checkpoints under %s belong to another input/params/code: starting fresh", self.url)
            self.clear()
            return None
        for entry in reversed(index["checkpoints"]):
            path = self._p(entry["file"])
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:
                log.warning("checkpoint %s listed in %s is missing; trying an older one", path, LATEST)
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                log.error("checkpoint %s is corrupt (sha256 mismatch); moving it aside, trying an older one", path)
                self._quarantine(entry["file"])
                continue
            try:
                payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
            except Exception as exc:  # torch raises several types for a damaged archive
                log.error("checkpoint %s cannot be loaded (%s); moving it aside, trying an older one", path, exc)
                self._quarantine(entry["file"])
                continue
            log.info("resuming from checkpoint %s (step %d)", path, entry["step"])
            return payload
        log.warning("no usable checkpoint under %s: training starts fresh", self.url)
        return None

    def latest_step(self) -> int | None:
        index = self._index()
        if not index or not index["checkpoints"]:
            return None
        return int(index["checkpoints"][-1]["step"])

    def clear(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    # small JSON side files (the rank's result), written atomically too
    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        self._write_atomic(name, json.dumps(doc, indent=1, default=str).encode())

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self._p(name)
        if not self.fs.exists(path):
            return None
        return json.loads(self.fs.cat_file(path))


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states as tensors (weights_only-safe)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
