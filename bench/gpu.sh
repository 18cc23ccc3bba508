#!/usr/bin/env bash
# GPU training benchmark: the real train step (torchrun, NCCL, one process per GPU, bf16 autocast)
# streaming an encrypted split, vs a bare bf16 loop over tensors already on the GPU.
# Reports samples/s, GPU utilization (nvidia-smi sampled every 200 ms during each phase) and peak
# memory (torch.cuda.max_memory_allocated) into bench/results/gpu.json.
#
#   bash bench/gpu.sh                      # from the repo root; no edits needed
#   ROWS=4000000 EPOCHS=3 BATCH=16384 bash bench/gpu.sh
#
# Python: ./.venv if its torch sees CUDA, else a venv at $LF_GPU_VENV (default .venv-gpu) made with
# python3.11 and the pins of requirements.txt for the packages training needs (torch==2.13.0 from
# PyPI is the CUDA build on Linux). Without an NVIDIA GPU it stops at once with exit code 2.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench/gpu.sh: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this benchmark needs an NVIDIA GPU and driver"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi sees no GPU ($(nvidia-smi -L 2>&1 | head -1))"

cuda_ok() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

PY=""
if [ -x .venv/bin/python ] && cuda_ok .venv/bin/python; then
  PY=.venv/bin/python
else
  VENV="${LF_GPU_VENV:-.venv-gpu}"
  if [ ! -x "$VENV/bin/python" ]; then
    BASE="$(command -v python3.11 || command -v python3 || true)"
    [ -n "$BASE" ] || die "no python3.11 (or python3) to create $VENV"
    "$BASE" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' || die "$BASE is older than 3.11"
    echo "bench/gpu.sh: creating $VENV with $BASE" >&2
    "$BASE" -m venv "$VENV"
  fi
  PINS="$(grep -iE '^(torch|numpy|pyarrow|fsspec|pyyaml|cryptography|scikit-learn|scipy|matplotlib|sqlalchemy|psutil)==' requirements.txt)"
  [ -n "$PINS" ] || die "requirements.txt has none of the expected pins"
  echo "bench/gpu.sh: installing $(echo "$PINS" | tr '\n' ' ')" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $PINS >&2
  PY="$VENV/bin/python"
  cuda_ok "$PY" || die "torch in $PY cannot use CUDA: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1)"
fi
echo "bench/gpu.sh: using $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'))" >&2

mkdir -p bench/results
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ROWS="${ROWS:-2000000}" EPOCHS="${EPOCHS:-2}" BATCH="${BATCH:-8192}" WORKERS="${WORKERS:-4}" \
  "$PY" - <<'PYEOF'
import json, logging, os, subprocess, tempfile, threading, time
from pathlib import Path

import numpy as np
import torch

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("bench.gpu")
rows, epochs, batch, workers = (int(os.environ[k]) for k in ("ROWS", "EPOCHS", "BATCH", "WORKERS"))


class Sampler:
    """nvidia-smi utilization / memory samples every 200 ms while a phase runs."""

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "200"], stdout=subprocess.PIPE, text=True)
        self.samples = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                idx, util, mem = (float(v) for v in line.strip().split(","))
                self.samples.append((idx, util, mem))
            except ValueError:
                pass

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=5)

    def summary(self):
        util = [s[1] for s in self.samples]
        mem = [s[2] for s in self.samples]
        return {"samples": len(util), "util_mean_pct": round(float(np.mean(util)), 1) if util else None,
                "util_max_pct": max(util) if util else None, "mem_used_max_mib": max(mem) if mem else None}


from tasks.context import StepContext
from tasks.training.model import build_model, loss_fn
from tasks.io.parquet import read_table
from tasks.training.stream import transform
from tasks.training import train as train_step
from tests.train_data import make_split

home = tempfile.mkdtemp(prefix="lf-gpu-bench-")
os.environ.update(LEPTONFLOW_HOME=home, LEPTONFLOW_LAKE=f"{home}/lake", LEPTONFLOW_KEYRING=f"{home}/keys/k.json",
                  LEPTONFLOW_HISTORY_URL=f"sqlite:///{home}/history.sqlite")
os.environ.pop("LEPTONFLOW_KEYRING_JSON", None)
from tasks.security import keyring
keyring.generate(f"{home}/keys/k.json")  # explicitly: tasks never create a keyring
hp = {"epochs": epochs, "batch_size": batch, "lr": 2e-3, "hidden": "256,128", "dropout": 0.0, "patience": epochs,
      "seed": 1, "checkpoint_every": 10**9, "train_workers": workers, "encrypt": True}
ctx = StepContext(dataset="events", ds="2026-11-02", params=hp)
t0 = time.perf_counter()
split = make_split(ctx.lake, ds=ctx.ds, rows={"train": rows, "val": rows // 20, "test": 1000}, files_per_group=8,
                   row_group_rows=131072, crypto=ctx.crypto())
log.info("encrypted split: %d train rows in %.1fs", rows, time.perf_counter() - t0)
stats = split.extra["feature_stats"]

with Sampler() as s_ours:
    res = train_step.run(ctx)
ours = res["train_samples_per_s"]
log.info("leptonflow train step: %.0f samples/s on %s x %s", ours, res["nproc"], res["device"])

crypto = ctx.crypto()
parts = [transform(read_table(ctx.lake.abspath(split, f), crypto), stats) for f in split.group_files("train")]
dev = torch.device("cuda:0")
x_num, x_cat, y = (torch.from_numpy(np.concatenate([p[k] for p in parts])).to(dev) for k in range(3))
torch.manual_seed(1)
model = build_model(stats, hp).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"])
crit = loss_fn(stats["task"])
torch.cuda.reset_peak_memory_stats(dev)
with Sampler() as s_bare:
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), device=dev).split(batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x_num[idx], x_cat[idx])
            loss = crit(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(idx)
    torch.cuda.synchronize()
    bare = n / (time.perf_counter() - t0)
log.info("bare bf16 loop over GPU tensors: %.0f samples/s", bare)

out = {
    "benchmark": "gpu_train", "command": "bash bench/gpu.sh", "rows": rows, "epochs": epochs, "batch_size": batch,
    "train_workers": workers, "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "precision": "bf16 autocast",
    "leptonflow": {"samples_per_s": round(ours, 1), "nproc": res["nproc"], "device": res["device"],
                   "peak_mem_allocated_bytes": res.get("peak_gpu_mem_bytes"), "best_val_auc": res["best_val_metric"],
                   "nvidia_smi": s_ours.summary()},
    "bare_gpu_tensors": {"samples_per_s": round(bare, 1),
                         "peak_mem_allocated_bytes": torch.cuda.max_memory_allocated(dev),
                         "nvidia_smi": s_bare.summary()},
    "ratio_vs_bare": round(ours / bare, 3),
}
Path("bench/results/gpu.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
PYEOF
echo "bench/gpu.sh: wrote bench/results/gpu.json" >&2
