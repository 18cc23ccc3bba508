"""Cost of Ed25519 manifest signatures against the HMAC-SHA256 they replaced.

Per signature and per verification of a real lake manifest payload (a split manifest with
files, feature statistics and lineage: a few KB), and the time a whole lake commit + read of
that manifest takes with each signer (the commit protocol's record included, so the
signature's share of a step's manifest work is measured, not assumed). CPU time of this
process; the best of the repeats (contention only adds time), medians in the JSON.

    PYTHONPATH=. .venv/bin/python bench/signing.py [--repeats 7] [--n 2000] [--pipeline]

``--pipeline`` also runs one whole interval (``tasks.steps.run_pipeline`` on 8000 generated rows)
counting every signature made and checked and the CPU time they took, next to the run's CPU time.

Writes bench/results/signing.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.io.lake import Lake, Manifest
from tasks.security import keyring, signing
from tests.train_data import make_split

RESULTS = REPO / "bench" / "results" / "signing.json"


def per_call(fn, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def hmac_pair(key: bytes):
    def sign(payload: bytes) -> str:
        mac = hmac.new(key, b"leptonflow-manifest-v2\0sk-1\0" + payload, hashlib.sha256)
        return "hmac-sha256:sk-1:" + mac.hexdigest()

    def verify(payload: bytes, sig: str) -> bool:
        return hmac.compare_digest(sign(payload), sig)

    return sign, verify


def commit_and_read(lake: Lake, m: Manifest, n: int) -> float:
    """CPU seconds per (commit of `m` as a new version + verified read of it) on this lake."""
    t0 = time.process_time()
    for _ in range(n):
        version, _ = lake.new_version(m.stage, m.dataset, m.ds)
        lake.commit(Manifest(m.stage, m.dataset, m.ds, version, files=list(m.files), extra=m.extra))
        lake.require(m.stage, m.dataset, m.ds)
    return (time.process_time() - t0) / n


def pipeline_share(work: Path) -> dict[str, Any]:
    """Signatures made/checked in one whole interval and their CPU time, against the run's CPU time."""
    import os

    from tasks import steps
    from tasks.context import Settings, StepContext
    from tasks.prep import datagen
    from tasks.spec import spec_for

    home = work / "pipeline"
    env = {"LEPTONFLOW_HOME": str(home), "LEPTONFLOW_KEYRING": str(home / "keys" / "keyring.json")}
    keyring.generate(env["LEPTONFLOW_KEYRING"])
    datagen.generate(str(home / "lake"), spec_for("events"), "2026-11-01", 1, 8000, seed=5)
    counts = {"signatures": 0, "verifications": 0, "sign_cpu_s": 0.0, "verify_cpu_s": 0.0}
    orig_call, orig_problem = signing.Signer.__call__, signing.Verifier.problem

    def call(self, payload):
        t = time.process_time()
        try:
            return orig_call(self, payload)
        finally:
            counts["sign_cpu_s"] += time.process_time() - t
            counts["signatures"] += 1

    def problem(self, payload, sig):
        t = time.process_time()
        try:
            return orig_problem(self, payload, sig)
        finally:
            counts["verify_cpu_s"] += time.process_time() - t
            counts["verifications"] += 1

    signing.Signer.__call__, signing.Verifier.problem = call, problem
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        ctx = StepContext(dataset="events", ds="2026-11-01", env=Settings.from_env(env),
                          params={"epochs": 1, "hidden": "32", "batch_size": 512})
        t0, c0 = time.time(), time.process_time()
        steps.run_pipeline(ctx)
        wall, cpu = time.time() - t0, time.process_time() - c0
    finally:
        signing.Signer.__call__, signing.Verifier.problem = orig_call, orig_problem
    spent = counts["sign_cpu_s"] + counts["verify_cpu_s"]
    return {**{k: round(v, 5) for k, v in counts.items()}, "run_wall_s": round(wall, 2),
            "run_cpu_s_this_process": round(cpu, 2), "signature_share_of_cpu": round(spent / cpu, 5)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--n", type=int, default=2000, help="signatures per repeat")
    p.add_argument("--commits", type=int, default=40, help="lake commits per repeat")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--pipeline", action="store_true", help="also count signatures in one whole interval")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-signing-"))
    ring = keyring.generate(work / "keys" / "keyring.json")
    hsign, hverify = hmac_pair(bytes(range(32)))
    esign, everify = signing.signer_for(ring), signing.verifier_for(ring)
    plain = Lake(str(work / "plain"))
    split = make_split(plain, rows={"train": 3000, "val": 500, "test": 500}, files_per_group=8)
    payload = split.payload()
    hsig, esig = hsign(payload), esign(payload)
    rounds: dict[str, list[float]] = {k: [] for k in ("hmac_sign", "hmac_verify", "ed25519_sign", "ed25519_verify",
                                                       "commit_read_hmac", "commit_read_ed25519")}
    lakes = {"commit_read_hmac": Lake(str(work / "h"), signer=hsign, verifier=hverify),
             "commit_read_ed25519": Lake(str(work / "e"), signer=esign, verifier=everify)}
    for _ in range(args.repeats):
        rounds["hmac_sign"].append(per_call(lambda: hsign(payload), args.n))
        rounds["hmac_verify"].append(per_call(lambda: hverify(payload, hsig), args.n))
        rounds["ed25519_sign"].append(per_call(lambda: esign(payload), args.n))
        rounds["ed25519_verify"].append(per_call(lambda: everify(payload, esig), args.n))
        for k, lake in lakes.items():
            rounds[k].append(commit_and_read(lake, split, args.commits))
    best = {k: min(v) for k, v in rounds.items()}
    med = {k: statistics.median(v) for k, v in rounds.items()}
    us = lambda s: round(s * 1e6, 2)  # noqa: E731
    result: dict[str, Any] = {
        "bench": "signing",
        "command": "PYTHONPATH=. .venv/bin/python bench/signing.py " + " ".join(argv or sys.argv[1:]),
        "payload_bytes": len(payload),
        "statistic": "CPU microseconds per call, min over repeats (medians under 'median')",
        "us": {k: us(v) for k, v in best.items()},
        "median_us": {k: us(v) for k, v in med.items()},
        "ed25519_extra_us_per_manifest": us(best["ed25519_sign"] + best["ed25519_verify"]
                                            - best["hmac_sign"] - best["hmac_verify"]),
        "commit_read_overhead": round(best["commit_read_ed25519"] / best["commit_read_hmac"] - 1, 4),
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    if args.pipeline:
        result["pipeline"] = pipeline_share(work)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"payload {len(payload)} bytes; CPU us per call (best of {args.repeats}):")
    for k, v in result["us"].items():
        print(f"  {k:<22} {v:>10.2f}")
    print(f"Ed25519 costs {result['ed25519_extra_us_per_manifest']} us more per manifest (sign + verify); "
          f"a lake commit + verified read costs {result['commit_read_overhead']:+.1%} with it")
    if args.pipeline:
        pl = result["pipeline"]
        print(f"one whole interval: {pl['signatures']} signatures + {pl['verifications']} verifications = "
              f"{pl['sign_cpu_s'] + pl['verify_cpu_s']:.4f} CPU s of {pl['run_cpu_s_this_process']} "
              f"({pl['signature_share_of_cpu']:.3%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
