"""The train step: distributed PyTorch training streamed from the (encrypted) split, resumable.

Two halves, in two kinds of process:

* ``run(ctx)`` (the step, in the Airflow task or the CLI) decides nproc and
  device (the ``plan_train`` plan, else setting ``train_nproc``), writes a JSON
  config (paths, stats, hparams; never key material) and launches the ranks the
  way ``torchrun`` does: ``python -m torch.distributed.run --standalone ... -m
  tasks.training.train --config F`` in a fresh subprocess whose output is streamed into
  the task log. The ranks never import Airflow (a Python child of an Airflow
  task that imports Airflow inherits the task's blocked-DB settings and fails).
  When the ranks finish, it writes ``model_config.json``, ``metrics.json`` and
  ``curves.png`` next to rank 0's ``model.pt`` and commits the ``model`` stage.
* ``main()`` (each rank): gloo on CPU or NCCL with one GPU per process and bf16
  autocast, DDP, a :class:`tasks.training.stream.StreamDataset` sharded by rank and
  DataLoader worker, checkpoints every ``checkpoint_every`` steps and at each
  epoch end, early stopping on the validation metric.

Training is sized to the data (:mod:`tasks.training.sizing`): the batch is bounded by the train
rows, epochs are added up to ``min_steps`` optimizer steps, the learning rate follows warmup +
cosine; regression trains on the label standardized with its train mean and std
(:mod:`tasks.training.model`), the head starting at the trivial predictor.

Retries resume: checkpoints live in ``<lake>/model/<dataset>/ds=<ds>/checkpoints``
keyed by (input fingerprint, code version, params), so an Airflow retry of the
same interval continues from the last checkpoint (exact data position), and a
run with other input or params starts fresh.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any

from tasks.errors import LeptonflowError, ManifestError, SettingError
from tasks.io import verified
from tasks.io.code_version import code_version
from tasks.io.lake import FileEntry, Lake, Manifest, fingerprint
from tasks.resources.step_metrics import StepMetrics
from tasks.training import sizing

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
RESULT = "result.json"
_RUNNING: set[subprocess.Popen] = set()  # torchrun launchers of this process (for stop_running)


class TrainError(LeptonflowError, RuntimeError):
    """Training could not run or the rank processes failed; the message says which and why."""


# ============================================================================ the step (parent)
def hparams_from(ctx: Any) -> dict[str, Any]:
    """The training settings of this run (typed and bounds-checked by :mod:`tasks.params`), hidden parsed.

    ``batch_size`` is the GLOBAL batch, split evenly over the ranks, so results do not depend on nproc;
    ``train_workers`` None means 0 DataLoader workers on CPU, up to 4 per GPU (:func:`auto_workers`).
    """
    from tasks.training.model import parse_hidden

    hp = {
        "epochs": ctx.param("epochs"), "batch_size": ctx.param("batch_size"), "lr": ctx.param("lr"),
        "hidden": ctx.param("hidden"), "dropout": ctx.param("dropout"), "weight_decay": ctx.param("weight_decay"),
        "patience": ctx.param("patience"), "seed": ctx.param("seed"), "checkpoint_every": ctx.param("checkpoint_every"),
        "train_workers": ctx.param("train_workers"), "shuffle_rows": ctx.param("shuffle_rows"),
        "log_every": ctx.param("log_every"), "min_steps": ctx.param("min_steps"),
        "min_epoch_steps": ctx.param("min_epoch_steps"), "lr_schedule": ctx.param("lr_schedule"),
        "warmup_fraction": ctx.param("warmup_fraction"),
    }
    try:
        hp["hidden"] = parse_hidden(hp["hidden"])
    except ValueError as exc:
        raise SettingError("hidden", str(exc)) from None
    return hp


def placement(ctx: Any) -> tuple[int, str]:
    """(nproc, device): the plan_train plan if there is one, else Param train_nproc; CUDA when present."""
    import torch

    plan = ctx.plan("train") or {}
    cuda = torch.cuda.is_available()
    device = str(plan.get("device") or ("cuda" if cuda else "cpu"))
    if device == "cuda" and not cuda:
        log.warning("the plan asks for cuda but no GPU is visible here: training on cpu")
        device = "cpu"
    nproc = int(plan.get("nproc") or ctx.param("train_nproc") or (torch.cuda.device_count() if cuda else 1))
    if device == "cuda" and nproc > torch.cuda.device_count():
        log.warning("nproc %d > %d visible GPUs: using one process per GPU", nproc, torch.cuda.device_count())
        nproc = torch.cuda.device_count()
    if nproc < 1:
        raise TrainError(f"nproc must be >= 1, got {nproc} (from the plan_train plan or setting train_nproc)")
    return nproc, device


def auto_workers(device: str, nproc: int) -> int:
    """DataLoader workers per rank when Param train_workers is unset.

    CPU: 0. The rank's own threads already use the cores, and bench/train.py measured in-process
    loading faster than a worker process on a small CPU host. GPU: the loop waits on the device, so
    read + decrypt + transform run in workers on the cores one process per GPU leaves free (at most 4).
    """
    if device != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // max(1, nproc) - 1))


def fmt_eta(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a duration for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(done: int, epochs: int, samples_per_s: float, eta_s: float) -> str:
    """Rank 0's line after each epoch (relayed into the task log by :func:`launch`):
    ``progress: epoch 2/5 (40%), 12,345 samples/s, ETA 1m05s`` (the ETA assumes no early stop)."""
    return (f"progress: epoch {done}/{epochs} ({100 * done / max(epochs, 1):.0f}%), "
            f"{samples_per_s:,.0f} samples/s, ETA {fmt_eta(eta_s)}")


PROGRESS_RE = r"progress: epoch (\d+)/(\d+) \((\d+)%\), ([\d,]+) samples/s, ETA (\d+s|\d+m\d\ds|\d+h\d\dm)"


def checkpoint_url(lake: Lake, dataset: str, ds: str) -> str:
    return lake.full_url(f"{lake.interval_dir('model', dataset, ds)}/checkpoints")


def launch(nproc: int, config_path: str, env_extra: dict[str, str] | None = None) -> None:
    """Run the ranks under torch.distributed.run (torchrun) and stream their output into our log."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", str(nproc), "--max-restarts", "0", "-m", "tasks.training.train", "--config", config_path,
    ]
    env = rank_env(env_extra)
    log.info("launching %d rank(s): %s", nproc, " ".join(cmd))
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _RUNNING.add(proc)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info("%s", line)
        rc = proc.wait()
    except BaseException:  # task killed / timed out: do not leave the ranks running
        _stop(proc)
        raise
    finally:
        _RUNNING.discard(proc)
    if rc != 0:
        raise TrainError(f"training ranks failed (torchrun exit code {rc}); last output:\n" + "\n".join(tail))


def crypto_to_config(crypto: Any) -> dict[str, Any] | None:
    """The ranks' view of the step's encryption as JSON: key id, keyring path, KMS config (no key)."""
    if crypto is None:
        return None
    return {"key_id": crypto.key_id, "keyring_path": crypto.keyring_path, "pii_columns": list(crypto.pii_columns),
            "kms": crypto.kms.to_dict() if crypto.kms else None}


def crypto_from_config(cfg: dict[str, Any] | None) -> Any:
    if cfg is None:
        return None
    from tasks.security.crypto import LakeCrypto
    from tasks.security.kms import KmsConfig

    return LakeCrypto(key_id=cfg["key_id"], keyring_path=cfg["keyring_path"], pii_columns=tuple(cfg["pii_columns"]),
                      kms=KmsConfig.from_dict(cfg["kms"]) if cfg.get("kms") else None)


def rank_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the ranks: this process's, without Connections (ranks never use Airflow, and an
    ``AIRFLOW_CONN_*`` value may hold secrets); the keyring reaches them as a path in the config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM torchrun (it forwards the signal to the ranks), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def stop_running() -> None:
    """Stop the training launched by this process (the operator's on_kill); checkpoints stay for the retry."""
    for proc in list(_RUNNING):
        _stop(proc)


def _curves_png(history: list[dict[str, Any]], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(epochs, [h["val_metric"] for h in history], "o-", color="C2")
    a2.set_xlabel("epoch")
    a2.set_ylabel(f"val {metric}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def run(ctx: Any) -> dict[str, Any]:
    from tasks.training.checkpoint import CheckpointStore
    from tasks.training.metrics import primary_metric

    lake: Lake = ctx.lake
    split = lake.require("split", ctx.dataset, ctx.ds)
    stats = split.extra.get("feature_stats")
    if not stats:
        raise ManifestError(f"split/{ctx.dataset} ds={ctx.ds}: manifest has no extra['feature_stats']")
    for group in ("train", "val"):
        if not split.group_files(group):
            raise ManifestError(f"split/{ctx.dataset} ds={ctx.ds}: no files in group {group!r}")
    hp = hparams_from(ctx)
    params = ctx.cache_params(__name__)
    code = code_version(__name__)
    input_fp = Lake.manifests_fingerprint(split)
    metric_name, _ = primary_metric(stats["task"])
    hit = lake.cache_hit("model", ctx.dataset, ctx.ds, input_fp, code, params)
    if hit is not None:
        log.info("model %s ds=%s is up to date (cache hit)", ctx.dataset, ctx.ds)
        return {"cache_hit": True, **hit.extra.get("metrics", {})}

    nproc, device = placement(ctx)
    crypto = ctx.crypto()
    urls = {g: [verified.file_url(lake, split, f) for f in split.group_files(g)] for g in ("train", "val")}
    # every file verified (size, rows, sha256) in one read before any rank starts; the ranks get each
    # file's verified layout (row groups, size, footer digest) and refuse a file replaced since
    layouts = {g: verified.layouts(lake, split, split.group_files(g), crypto) for g in ("train", "val")}
    rg_rows = {g: [lay.row_groups for lay in ls] for g, ls in layouts.items()}
    train_rows = sum(map(sum, rg_rows["train"]))
    batch = sizing.batch_for(train_rows, hp["batch_size"], hp["min_epoch_steps"])
    if batch != hp["batch_size"]:
        log.info("global batch %d (setting batch_size %d) for %d train rows: at least %d steps per epoch", batch,
                 hp["batch_size"], train_rows, hp["min_epoch_steps"])
    if device == "cpu" and nproc > 1 and batch % nproc:
        log.warning("global batch %d is not divisible by %d ranks", batch, nproc)
    if stats["task"] == "regression" and not stats.get("target"):
        stats = {**stats, "target": label_stats(urls["train"], stats["label"], crypto)}
    ckpt_url = checkpoint_url(lake, ctx.dataset, ctx.ds)
    run_key = fingerprint(input_fp, code, params)
    version, vdir = lake.new_version("model", ctx.dataset, ctx.ds)
    config = {
        "dataset": ctx.dataset, "ds": ctx.ds, "lake_url": ctx.lake_url, "crypto": crypto_to_config(crypto),
        "params": {k: v for k, v in ctx.params.items() if isinstance(v, str | int | float | bool | type(None))},
        "files": urls, "rg_rows": rg_rows, "stats": stats,
        "layouts": {g: [lay.to_json() for lay in ls] for g, ls in layouts.items()}, "hparams": hp, "device": device,
        "batch_size": batch,
        "checkpoint_url": ckpt_url, "run_key": run_key, "out_url": lake.full_url(vdir), "version": version,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="lf-train-") as tmp:
            cfg_path = os.path.join(tmp, "config.json")
            Path(cfg_path).write_text(json.dumps(config))
            launch(nproc, cfg_path)
        store = CheckpointStore(ckpt_url)
        result = store.read_json(RESULT)
        if not result or result.get("version") != version:
            raise TrainError(f"{ckpt_url}/{RESULT}: rank 0 left no result for version {version}")
        files = [FileEntry(path=f"v={version}/model.pt", rows=0, bytes=result["model_bytes"],
                           sha256=result["model_sha256"])]
        model_config = {
            "hparams": hp, "arch": result["arch"], "task": stats["task"], "metric": metric_name,
            "best_val_metric": result["best_val_metric"], "feature_stats": stats, "sizing": result["sizing"],
            "feature_stats_ref": {"stage": "split", "version": split.version, "digest": split.digest()},
            "spec_fingerprint": ctx.spec.fingerprint(), "code_version": code,
        }
        files.append(lake.put_bytes(vdir, version, "model_config.json", json.dumps(model_config, indent=1).encode()))
        files.append(lake.put_bytes(vdir, version, "metrics.json", json.dumps(
            {k: result[k] for k in ("history", "best_val_metric", "best_epoch", "metric", "stopped_early")},
            indent=1).encode()))
        files.append(lake.put_bytes(vdir, version, "curves.png", _curves_png(result["history"], metric_name)))
        out = {
            "epochs_run": len(result["history"]), "best_val_metric": result["best_val_metric"],
            "metric": metric_name, "best_epoch": result["best_epoch"], "stopped_early": result["stopped_early"],
            "train_samples_per_s": result["train_samples_per_s"], "global_step": result["global_step"],
            "resumed_from_step": result["resumed_from_step"], "device": device,
            "peak_gpu_mem_bytes": result.get("peak_gpu_mem_bytes"), "batch_size": batch,
            "sizing": result["sizing"],
            # workers = the ranks; threads, memory limit: the plan's (tasks.resources.history.record_step)
            **StepMetrics(input_bytes=sum(f.bytes for f in split.group_files("train")),
                          input_rows=sum(map(sum, rg_rows["train"])), workers=nproc).to_json(),
        }
        manifest = lake.commit(Manifest(
            stage="model", dataset=ctx.dataset, ds=ctx.ds, version=version, files=files,
            input_fingerprint=input_fp, code_version=code, params=params,
            extra={"metrics": out, "arch": result["arch"], "split_version": split.version},
        ))
    except BaseException:
        lake.discard("model", ctx.dataset, ctx.ds, version)
        raise
    CheckpointStore(ckpt_url).clear()  # committed: a retry is now a cache hit, checkpoints are dead weight
    paths = {f.path.rsplit("/", 1)[-1]: lake.full_url(lake.abspath(manifest, f)) for f in files}
    out.update(model_path=paths["model.pt"], curve_path=paths["curves.png"], version=version)
    return out


def label_stats(urls: list[str], label: str, crypto: Any) -> dict[str, Any]:
    """Train mean/std of the label from the (just verified) train files, for a split whose feature stats
    predate ``stats["target"]`` (:func:`tasks.prep.features.finalize` records it)."""
    import numpy as np

    from tasks.io.parquet import open_parquet

    values = [open_parquet(u, crypto).read(columns=[label]).column(0).cast("float64").to_numpy() for u in urls]
    y = np.concatenate(values) if values else np.zeros(0)
    y = y[~np.isnan(y)]
    log.warning("split feature stats have no label statistics (written by an older clean): computed from %d "
                "train rows", len(y))
    return {"mean": float(y.mean()) if len(y) else 0.0, "std": float(y.std()) if len(y) else 0.0,
            "min": float(y.min()) if len(y) else None, "max": float(y.max()) if len(y) else None, "count": len(y)}


# ============================================================================ the ranks
class Trainer:
    """One rank's training loop (rank 0 also validates, checkpoints and writes the result)."""

    def __init__(self, cfg: dict[str, Any], rank: int, world: int, local_rank: int):
        import torch

        from tasks.training.checkpoint import CheckpointStore
        from tasks.training.metrics import primary_metric
        from tasks.training.model import build_model, init_output, loss_fn

        self.cfg, self.rank, self.world = cfg, rank, world
        self.hp, self.stats = cfg["hparams"], cfg["stats"]
        self.task = self.stats["task"]
        self.metric, self.higher_better = primary_metric(self.task)
        self.cuda = cfg["device"] == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise TrainError("device cuda was planned but this rank sees no GPU")
        self.device = torch.device(f"cuda:{local_rank}" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        # ids, a keyring path and a KMS config: no key material crossed the process boundary
        self.crypto = crypto_from_config(cfg.get("crypto"))
        workers = self.hp["train_workers"]
        self.workers = auto_workers(cfg["device"], world) if workers is None else int(workers)
        self.batch = int(cfg.get("batch_size") or self.hp["batch_size"])  # the global batch sized to the rows
        self.local_batch = max(1, self.batch // world)
        torch.manual_seed(self.hp["seed"])  # identical initial weights on every rank
        model = build_model(self.stats, self.hp)
        init_output(model, self.stats)  # start at the trivial predictor (train prior / mean)
        self.model = model.to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])
        self.criterion = loss_fn(self.task, self.model.arch["target"])  # regression: the standardized scale
        self.sizing: Any = None  # planned in fit(), from the epoch's steps
        self.store = CheckpointStore(cfg["checkpoint_url"])
        self.state: dict[str, Any] = {
            "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": -1,
            "bad_epochs": 0, "stopped_early": False, "history": [], "world_size": world,
            "num_workers": self.workers,
        }
        self.best_model: dict[str, Any] | None = None
        self.resumed_from: int | None = None

    # -- distributed helpers --
    def _dist(self) -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and self.world > 1

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self._dist():
            dist.barrier()

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch
        import torch.distributed as dist

        if not self._dist():
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def _broadcast(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        if not self._dist():
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    # -- checkpoints --
    def resume(self) -> None:
        from tasks.training.checkpoint import set_rng_state

        # rank 0 first: it may move corrupt files aside or clear stale ones; the others then see the same choice
        payload = self.store.load(self.cfg["run_key"]) if self.rank == 0 else None
        self._barrier()
        if self.rank != 0:
            payload = self.store.load(self.cfg["run_key"])
        if payload is None:
            return
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["optimizer"])
        self.state = dict(payload["state"])
        self.best_model = payload.get("best_model")
        rngs = payload.get("rng") or []
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        if self.state.get("world_size") != self.world or self.state.get("num_workers") != self.workers:
            log.warning("checkpoint was made with %s ranks x %s workers, now %d x %d: restarting epoch %d "
                        "from its start", self.state.get("world_size"), self.state.get("num_workers"), self.world,
                        self.workers, self.state["epoch"])
            self.state.update(step_in_epoch=0, world_size=self.world, num_workers=self.workers)
        self.resumed_from = int(self.state["global_step"])
        log.info("resumed at epoch %d step-in-epoch %d (global step %d)", self.state["epoch"],
                 self.state["step_in_epoch"], self.resumed_from)

    def checkpoint(self) -> None:
        """Collective: every rank contributes its RNG state, rank 0 writes."""
        import torch.distributed as dist

        from tasks.training.checkpoint import rng_state

        rngs: list[Any] = [rng_state()]
        if self._dist():
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state())
        if self.rank == 0:
            payload = {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scaler": None,
                "rng": rngs, "state": self.state, "best_model": self.best_model, "run_key": self.cfg["run_key"],
            }
            self.store.save(payload, self.state["global_step"], self.cfg["run_key"])

    # -- data --
    def dataset(self, group: str, epoch: int, skip: int = 0, *, train: bool = True) -> Any:
        from tasks.io.verified import Layout
        from tasks.training.stream import StreamDataset

        # the layouts the step verified: a file replaced since is refused, naming it
        layouts = [Layout.from_json(d) for d in self.cfg["layouts"][group]] if "layouts" in self.cfg else None
        if train:
            return StreamDataset(
                self.cfg["files"][group], self.stats, self.local_batch, crypto=self.crypto,
                rg_rows=self.cfg["rg_rows"][group], rank=self.rank, world_size=self.world,
                num_workers=self.workers, seed=self.hp["seed"], epoch=epoch, shuffle=True,
                shuffle_rows=self.hp["shuffle_rows"], skip_batches=skip, layouts=layouts,
            )
        return StreamDataset(self.cfg["files"][group], self.stats, 8192, crypto=self.crypto,
                             rg_rows=self.cfg["rg_rows"][group], shuffle=False, layouts=layouts)

    def validate(self) -> tuple[float, float]:
        """(val metric, val loss) computed on rank 0 over the whole val split, shared with every rank."""
        import torch

        from tasks.training.metrics import metric_value
        from tasks.training.predict import predict_batches

        value = [0.0, 0.0]
        if self.rank == 0:
            y, p = predict_batches(self.model, self.dataset("val", 0, train=False), self.task, self.device)
            yt, pt = torch.from_numpy(y), torch.from_numpy(p).double()
            if self.task == "classification":
                loss = torch.nn.functional.binary_cross_entropy(pt.clamp(1e-7, 1 - 1e-7), yt.double()).item()
            else:  # on the scale training minimizes (standardized for a regression label)
                loss = self.criterion(pt, yt.double()).item()
            value = [metric_value(self.task, y, p, split="val"), loss]
        metric, loss = self._broadcast(value)
        return metric, loss

    # -- the loop --
    def fit(self) -> dict[str, Any]:
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.utils.data import DataLoader

        self.resume()
        ds0 = self.dataset("train", 0)
        self.sizing = sizing.plan(ds0.rows, self.batch, ds0.steps_per_epoch(), self.hp)
        if self.rank == 0:
            log.info("training plan: %s", self.sizing.to_json())
        net = self.model
        if self._dist():
            net = DDP(self.model, device_ids=[self.device.index] if self.cuda else None)
        hp, st = self.hp, self.state
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else torch.autocast("cpu", enabled=False)
        speeds: list[float] = []
        epoch_walls: list[float] = []  # this run's epochs, validation included: the ETA of the rest
        while st["epoch"] < self.sizing.epochs and not st["stopped_early"]:
            epoch = st["epoch"]
            epoch_t0 = time.perf_counter()
            ds = self.dataset("train", epoch, st["step_in_epoch"])
            steps = ds.steps_per_epoch()
            if steps == 0:
                raise TrainError(f"train split has too few rows ({ds.rows}) for one batch of {self.local_batch} "
                                 f"per rank ({self.world} ranks; setting batch_size is the global batch)")
            loader = DataLoader(ds, batch_size=None, num_workers=self.workers, pin_memory=self.cuda,
                                prefetch_factor=4 if self.workers else None)
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            n_steps, samples, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
            for x_num, x_cat, y in islice(loader, ds.leading_discard(), None):
                if st["step_in_epoch"] >= steps:
                    break
                x_num = x_num.to(self.device, non_blocking=True)
                x_cat = x_cat.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                with autocast:
                    out = net(x_num, x_cat)
                loss = self.criterion(out.float(), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in self.opt.param_groups:  # a function of the global step: resumes exactly
                    group["lr"] = sizing.lr_at(st["global_step"], self.sizing)
                self.opt.step()
                loss_sum += loss.detach()
                n_steps += 1
                samples += len(y)
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                if self.rank == 0 and st["global_step"] % hp["log_every"] == 0:
                    log.info("epoch %d step %d/%d (global %d): loss %.4f", epoch + 1, st["step_in_epoch"], steps,
                             st["global_step"], loss.item())
                if st["global_step"] % hp["checkpoint_every"] == 0 and st["step_in_epoch"] < steps:
                    self.checkpoint()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0  # this rank's process, all threads
            total_loss, total_steps, total_samples = self._all_reduce([loss_sum.item(), n_steps, samples])
            (max_elapsed,) = self._all_reduce([elapsed], op="max")
            speed = total_samples / max(max_elapsed, 1e-9)
            speeds.append(speed)
            val_metric, val_loss = self.validate()
            better = st["best_metric"] is None or (
                val_metric > st["best_metric"] if self.higher_better else val_metric < st["best_metric"]
            )
            if better:
                st.update(best_metric=val_metric, best_epoch=epoch, bad_epochs=0)
                self.best_model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            elif st["global_step"] >= self.sizing.min_steps:  # early stopping counts once min_steps are done
                st["bad_epochs"] += 1
            st["history"].append({
                "epoch": epoch, "train_loss": total_loss / max(total_steps, 1), "val_loss": val_loss,
                "val_metric": val_metric, "samples_per_s": speed, "steps": steps,
                "rank0_samples_per_cpu_s": samples / max(cpu, 1e-9),
                "lr": self.opt.param_groups[0]["lr"],
            })
            epoch_walls.append(time.perf_counter() - epoch_t0)
            if self.rank == 0:
                log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f%s, %.0f samples/s", epoch + 1,
                         self.sizing.epochs, st["history"][-1]["train_loss"], val_loss, self.metric, val_metric,
                         " (best)" if better else "", speed)
                left = self.sizing.epochs - (epoch + 1)
                log.info("%s", progress_line(epoch + 1, self.sizing.epochs, speed,
                                             left * sum(epoch_walls) / len(epoch_walls)))
            st.update(epoch=epoch + 1, step_in_epoch=0)
            if st["bad_epochs"] > hp["patience"] - 1 and hp["patience"] > 0:
                st["stopped_early"] = True
                if self.rank == 0:
                    log.info("early stopping: no val %s improvement for %d epochs", self.metric, st["bad_epochs"])
            self.checkpoint()
        return self.finish(speeds)

    def finish(self, speeds: list[float]) -> dict[str, Any]:
        import fsspec
        import torch

        st = self.state
        result: dict[str, Any] = {}
        if self.rank == 0:
            weights = self.best_model or {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            buf = io.BytesIO()
            torch.save(weights, buf)
            data = buf.getvalue()
            with fsspec.open(f"{self.cfg['out_url']}/model.pt", "wb") as fh:
                fh.write(data)
            history = st["history"]
            result = {
                "version": self.cfg["version"], "model_sha256": hashlib.sha256(data).hexdigest(),
                "model_bytes": len(data), "arch": self.model.arch, "history": history,
                "best_val_metric": st["best_metric"], "best_epoch": st["best_epoch"], "metric": self.metric,
                "stopped_early": st["stopped_early"], "global_step": st["global_step"],
                "resumed_from_step": self.resumed_from, "sizing": self.sizing.to_json(),
                "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(self.device) if self.cuda else None,
                "train_samples_per_s": (sum(speeds) / len(speeds)) if speeds else
                (history[-1]["samples_per_s"] if history else 0.0),
            }
            self.store.write_json(RESULT, result)
            log.info("training done: %d epochs, best val %s %.4f (epoch %d), global step %d", len(history),
                     self.metric, st["best_metric"] if st["best_metric"] is not None else float("nan"),
                     st["best_epoch"] + 1, st["global_step"])
        self._barrier()
        return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of one rank (started by torch.distributed.run; env RANK, WORLD_SIZE, LOCAL_RANK)."""
    p = argparse.ArgumentParser(prog="python -m tasks.training.train", description="one training rank (use torchrun)")
    p.add_argument("--config", required=True, help="JSON config written by tasks.training.train.run")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}/{world}] %(levelname)s %(name)s: %(message)s")
    cfg = json.loads(Path(args.config).read_text())
    import torch
    import torch.distributed as dist

    if world > 1:
        backend = "nccl" if cfg["device"] == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("process group up: backend %s, %d ranks", backend, world)
    try:
        Trainer(cfg, rank, world, local_rank).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if "airflow" in sys.modules:  # the invariant that keeps ranks safe inside Airflow tasks
        raise TrainError("a training rank imported airflow; tasks/ must never import it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
