"""Fault injection on real `python -m tasks clean` processes: nothing committed is ever lost.

Each case runs the clean step of one small generated interval as its own process (a real
LocalCluster inside it, in-process workers) with faults coming from the operating-system calls the
step makes (tests/integration/fault_runner.py: ENOSPC/EIO on a write, link or delete, SIGSTOP,
SIGKILL) or from outside (SIGSTOP/SIGCONT, SIGKILL at a random moment, a second run at the same
time). After every case: every file of the committed clean and quarantine manifests matches its
sha256, both manifests come from the same run and carry the interval's accounting, before and
after a garbage collection with no grace. The same runs go against an S3 lake (moto server on
loopback) where S3 has its own failure points (the conditional PUT of the commit record).

``LF_FAULTS_CODE=/path/to/checkout`` runs the steps of another checkout (e.g. one from before the
commit protocol) to see which cases it fails; only the two cases of the issue use no path of the
new layout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import fsspec
import pytest

from tasks.errors import FencedError
from tasks.io import verified
from tasks.io.lake import Lake
from tasks.prep import datagen
from tasks.security import signing
from tasks.spec import spec_for
from tests.keys import keyring_at
from tests.moto_server import moto_server

REPO = Path(__file__).resolve().parents[2]
CODE = Path(os.environ.get("LF_FAULTS_CODE") or REPO)  # whose `python -m tasks` the cases run
NEW_LAYOUT = CODE == REPO
RUNNER = Path(__file__).with_name("fault_runner.py")
DS, ROWS = "2026-11-01", 3_000
CLUSTER = json.dumps({"backend": "local", "processes": False})
STAGES = ("clean", "quarantine")
new_layout_only = pytest.mark.skipif(not NEW_LAYOUT, reason="uses paths of the commit-record layout")


@dataclass
class Interval:
    """One generated interval in a lake, the environment its step processes get, and its base commit."""

    url: str
    home: Path
    env: dict[str, str]
    accounting: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    log_n: int = 0

    def lake(self, grace: float = 3600.0) -> Lake:
        if not NEW_LAYOUT:
            return Lake(self.url, gc_grace_s=grace)
        from tasks.security import keyring

        ring = keyring.load(self.env["LEPTONFLOW_KEYRING"])
        return Lake(self.url, signer=signing.signer_for(ring), verifier=signing.verifier_for(ring), gc_grace_s=grace)

    def command(self, rules: list[dict[str, Any]] | None, tag: str, step: str = "clean") -> list[str]:
        return [sys.executable, str(RUNNER), json.dumps(rules or []), "--", step, "--dataset", "events",
                "--ds", DS, "--lake", self.url, "--cluster", CLUSTER, "--param", "encrypt=false",
                "--param", "anomaly_check=false",
                "--param", f"rerun={tag}"]

    def start(self, tag: str, rules: list[dict[str, Any]] | None = None, step: str = "clean") -> subprocess.Popen:
        self.log_n += 1
        out = (self.home / f"run-{self.log_n}-{tag}.log").open("w")
        env = {**self.env, "LF_FAULT_LOG": str(self.home / f"faults-{self.log_n}.jsonl")}
        return subprocess.Popen(self.command(rules, tag, step), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(CODE), start_new_session=True)

    def run(self, tag: str, rules: list[dict[str, Any]] | None = None, step: str = "clean",
            timeout: float = 240) -> tuple[int, str, list[dict[str, Any]]]:
        """(exit status, output, faults that fired) of one step process."""
        proc = self.start(tag, rules, step)
        try:
            proc.wait(timeout=timeout)
        finally:
            _kill(proc)
        return proc.returncode, self.output(), self.fired()

    def output(self) -> str:
        return max(self.home.glob(f"run-{self.log_n}-*.log"), key=lambda p: p.stat().st_mtime).read_text()

    def fired(self) -> list[dict[str, Any]]:
        path = self.home / f"faults-{self.log_n}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _prepare(url: str, home: Path, extra_env: dict[str, str] | None = None) -> Interval:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{CODE}:{CODE / 'plugins'}", "LEPTONFLOW_HOME": str(home),
           "LEPTONFLOW_LAKE": url, "LEPTONFLOW_KEYRING": str(home / "keys" / "keyring.json"),
           "LEPTONFLOW_HISTORY_URL": f"sqlite:///{home / 'history.sqlite'}", "LEPTONFLOW_GC_GRACE_S": "1",
           **(extra_env or {})}
    env.pop("LEPTONFLOW_KEYRING_JSON", None)
    if NEW_LAYOUT:
        keyring_at(env["LEPTONFLOW_KEYRING"])
    datagen.generate(url, spec_for("events"), DS, 1, ROWS, seed=7, files_per_day=3)
    iv = Interval(url, home, env)
    t0 = time.monotonic()
    rc, out, _ = iv.run("base")
    assert rc == 0, out[-3000:]
    iv.wall_s = time.monotonic() - t0
    iv.accounting = _committed(iv)["clean"].extra["accounting"]
    return iv


def _committed(iv: Interval, grace: float = 3600.0) -> dict[str, Any]:
    """The committed clean + quarantine manifests, after checking every file's size and sha256 and that
    both are the same run's, with the interval's accounting (rows_in == clean + rejected)."""
    lake = iv.lake(grace)
    ms = lake.manifests("events", DS, STAGES) if NEW_LAYOUT else {s: lake.manifest(s, "events", DS, False)
                                                                  for s in STAGES}
    clean, quarantine = ms["clean"], ms["quarantine"]
    assert clean is not None and quarantine is not None, "nothing committed"
    for m in (clean, quarantine):
        for f in m.files:
            verified.check_file(lake, m, f)  # IntegrityError naming the file: missing, size or sha256
    acc = clean.extra["accounting"]
    assert acc["rows_in"] == acc["rows_clean"] + acc["rows_rejected"] == ROWS
    assert quarantine.extra["accounting"] == acc and clean.rows == acc["rows_clean"]
    assert quarantine.rows == acc["rows_rejected"]
    assert clean.extra["result"]["quarantine_version"] == quarantine.version  # one run's pair
    if iv.accounting:
        assert acc == iv.accounting
    return ms


def _collect(iv: Interval) -> None:
    """A garbage collection once the grace period has passed (grace 0), by another process than the steps'."""
    lake = iv.lake(0)
    for stage in STAGES:
        lake.collect_garbage(stage, "events", DS)


def _assert_intact(iv: Interval) -> dict[str, Any]:
    before = {s: m.version for s, m in _committed(iv).items()}
    _collect(iv)
    after = _committed(iv)
    assert {s: m.version for s, m in after.items()} == before
    return after


def _stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `proc` has stopped itself (SIGSTOP from its fault rule)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the writer finished before its fault stopped it"
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError("the writer never stopped")


@pytest.fixture
def local(tmp_path) -> Interval:
    return _prepare(str(tmp_path / "lake"), tmp_path / "home")


# ---- the two cases of the issue --------------------------------------------------------------------
def test_a_stalled_writer_cannot_uncommit_the_winner(local):
    """A stops after writing its first output file; B commits; a GC with a 1 s grace runs; A resumes."""
    a = local.start("A", [{"op": "write", "path": f"*/quarantine/events/ds={DS}/v=*/rejects-*", "when": "after",
                           "action": "stop"}])
    try:
        _stopped(a)
        rc, out, _ = local.run("B")
        assert rc == 0, out[-3000:]
        winner = {s: m.version for s, m in _committed(local).items()}
        time.sleep(1.5)  # longer than LEPTONFLOW_GC_GRACE_S=1: A's stall outlasts the grace period
        _collect(local)
        os.killpg(a.pid, signal.SIGCONT)
        a.wait(timeout=240)
    finally:
        _kill(a)
    after = {s: m.version for s, m in _assert_intact(local).items()}  # every committed file still as signed
    log_a = next(local.home.glob("run-*-A.log")).read_text()
    # A cannot commit: fenced at its commit, or earlier, when B's GC took the folders of the fenced-out writer
    assert a.returncode != 0 and "Error" in log_a, log_a[-3000:]
    assert after == winner


@new_layout_only
def test_a_writer_stalled_inside_its_commit_is_fenced(local):
    """A stops right before creating its commit record (slot chosen, record written); B commits meanwhile."""
    a = local.start("A", [{"op": "link", "path": f"*/_commits/events/ds={DS}/*.json", "nth": 2,
                           "action": "stop"}])
    try:
        _stopped(a)
        rc, out, _ = local.run("B")
        assert rc == 0, out[-3000:]
        winner = {s: m.version for s, m in _committed(local).items()}
        os.killpg(a.pid, signal.SIGCONT)
        a.wait(timeout=240)
    finally:
        _kill(a)
    log_a = next(local.home.glob("run-*-A.log")).read_text()
    assert a.returncode != 0 and "FencedError" in log_a, log_a[-3000:]  # its slot was taken: re-validated, refused
    assert {s: m.version for s, m in _assert_intact(local).items()} == winner
    lake = local.lake()
    with pytest.raises(FencedError):  # and a GC in A's name deletes nothing
        lake.collect_garbage("clean", "events", DS, token=1)


def test_enospc_on_the_second_manifest_keeps_the_previous_commit(local):
    """The half commit: the second manifest write of clean's commit fails with ENOSPC."""
    base = {s: m.version for s, m in _committed(local).items()}
    rc, out, fired = local.run("full", [{"op": "write", "path": "*_manifest.json.tmp-*", "nth": 2, "errno": 28}])
    assert fired and rc != 0, out[-3000:]
    assert "No space left on device" in out and f"{fired[0]['hit'].rsplit('.tmp-', 1)[0]}" in out  # names the file
    assert {s: m.version for s, m in _assert_intact(local).items()} == base
    rc, out, _ = local.run("seal", step="secure")  # every committed file verified again by the secure step
    assert rc == 0 and '"verified": true' in out, out[-3000:]


# ---- every write point of the commit sequence, in turn -------------------------------------------------
LOG = f"*/_commits/events/ds={DS}"
POINTS = [  # (name, rule, does the run still commit?)
    ("begin record written", {"op": "write", "path": f"{LOG}/*.json.tmp-*", "nth": 1}, False),
    ("begin record linked", {"op": "link", "path": f"{LOG}/*.json", "nth": 1}, False),
    ("first quarantine file", {"op": "write", "path": f"*/quarantine/events/ds={DS}/v=*/rejects-*"}, False),
    ("a clean file", {"op": "write", "path": f"*/clean/events/ds={DS}/v=*/train/part-*"}, False),
    ("shuffle folder removed", {"op": "rm", "path": "*/_shuffle", "errno": 5}, False),
    ("clean manifest", {"op": "write", "path": f"*/clean/events/ds={DS}/v=*/_manifest.json.tmp-*"}, False),
    ("quarantine manifest", {"op": "write", "path": f"*/quarantine/events/ds={DS}/v=*/_manifest.json.tmp-*"},
     False),
    ("commit record written", {"op": "write", "path": f"{LOG}/*.json.tmp-*", "nth": 2, "errno": 5}, False),
    ("commit record linked", {"op": "link", "path": f"{LOG}/*.json", "nth": 2}, False),
    ("temp file removed after the record", {"op": "rm", "path": f"{LOG}/*.json.tmp-*", "nth": 2, "errno": 5},
     True),
    ("old clean version collected", {"op": "rm", "path": f"*/clean/events/ds={DS}/v=*-t*-????????", "errno": 5},
     True),
    ("old quarantine version collected",
     {"op": "rm", "path": f"*/quarantine/events/ds={DS}/v=*-t*-????????", "errno": 5}, True),
]


@new_layout_only
def test_an_io_error_at_every_write_point_of_the_commit(local):
    for i, (name, rule, commits) in enumerate(POINTS):
        before = {s: m.version for s, m in _committed(local).items()}
        rc, out, fired = local.run(f"io{i}", [{"errno": 28, **rule}])
        assert fired, f"{name}: the fault never hit ({rule})"
        now = {s: m.version for s, m in _assert_intact(local).items()}
        if commits:  # past the commit point: committed, the failed clean-up is redone by the next GC
            assert rc == 0 and now != before, f"{name}: {out[-2000:]}"
        else:
            assert rc != 0 and now == before, f"{name}: {out[-2000:]}"
            assert "Traceback" in out and ("cannot write" in out or "Errno" in out), f"{name}: {out[-2000:]}"


@new_layout_only
def test_sigkill_at_each_commit_point_and_at_random_moments(local):
    kill_points = [POINTS[i] for i in (5, 6, 7, 8)]  # between the manifests and the record, around the record
    for i, (name, rule, _) in enumerate(kill_points):
        before = {s: m.version for s, m in _committed(local).items()}
        rc, out, fired = local.run(f"kill{i}", [{**rule, "action": "kill"}])
        assert fired and rc == -signal.SIGKILL, f"{name}: {out[-2000:]}"
        assert {s: m.version for s, m in _assert_intact(local).items()} == before, name
    rng = random.Random(17)
    outcomes = []
    for seed in range(5):
        before = {s: m.version for s, m in _committed(local).items()}
        proc = local.start(f"rand{seed}")
        time.sleep(rng.uniform(0.1, 0.9) * local.wall_s)
        _kill(proc)
        now = {s: m.version for s, m in _assert_intact(local).items()}
        outcomes.append("committed" if now != before else "previous")
        assert proc.returncode in (0, -signal.SIGKILL)
    rc, out, _ = local.run("after-kills")  # the interval is not wedged: the next run commits and cleans up
    assert rc == 0, out[-2000:]
    final = _assert_intact(local)
    lake = local.lake(0)
    for stage in STAGES:
        folders = {n for n in os.listdir(lake.interval_dir(stage, "events", DS)) if n.startswith("v=")}
        assert folders == {f"v={final[stage].version}"}, (stage, folders)  # killed writers' folders collected
    print("random SIGKILL outcomes:", outcomes)


def test_two_concurrent_runs_leave_one_whole_commit(local):
    for round_ in range(2):
        procs = [local.start(f"c{round_}{k}") for k in range(2)]
        for p in procs:
            p.wait(timeout=240)
        codes = [p.returncode for p in procs]
        logs = [next(local.home.glob(f"run-*-c{round_}{k}.log")).read_text() for k in range(2)]
        assert 0 in codes, logs
        for code, text in zip(codes, logs, strict=True):
            assert code == 0 or "superseded by the commit of token" in text, text[-3000:]
        _assert_intact(local)


# ---- the same on S3 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(tmp_path, moto_endpoint, monkeypatch) -> Interval:
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket="faults")
    conf = {"endpoint_url": moto_endpoint, "skip_instance_cache": True}
    monkeypatch.setitem(fsspec.config.conf, "s3", conf)
    # the step processes keep s3fs's instance cache (a client per URL would make each run 3x slower); the lake
    # code lists with the listing cache invalidated, so what it decides on is never a stale listing
    extra = {"FSSPEC_S3": json.dumps({"endpoint_url": moto_endpoint}), "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return _prepare("s3://faults/lake", tmp_path / "home", extra)


@new_layout_only
def test_s3_lake_stalled_writer_io_error_kill_and_concurrent_runs(s3):
    # a writer stopped right before the conditional PUT of its commit record; B commits meanwhile
    a = s3.start("A", [{"op": "pipe", "path": f"*/_commits/events/ds={DS}/*.json", "nth": 2, "action": "stop"}])
    try:
        _stopped(a)
        rc, out, _ = s3.run("B")
        assert rc == 0, out[-3000:]
        winner = {s: m.version for s, m in _committed(s3).items()}
        os.killpg(a.pid, signal.SIGCONT)
        a.wait(timeout=240)
    finally:
        _kill(a)
    log_a = next(s3.home.glob("run-*-A.log")).read_text()
    assert a.returncode != 0 and "FencedError" in log_a, log_a[-3000:]  # its PUT got 412, then refused
    assert {s: m.version for s, m in _assert_intact(s3).items()} == winner
    # an I/O error on the commit record's PUT, on the second manifest, and a kill at the PUT
    for i, rule in enumerate(({"op": "pipe", "path": f"*/_commits/events/ds={DS}/*.json", "nth": 2},
                              {"op": "pipe", "path": "*/v=*/_manifest.json", "nth": 2},
                              {"op": "pipe", "path": f"*/_commits/events/ds={DS}/*.json", "nth": 2,
                               "action": "kill"})):
        before = {s: m.version for s, m in _committed(s3).items()}
        rc, out, fired = s3.run(f"s3io{i}", [{"errno": 5, **rule}])
        assert fired and rc != 0, out[-2000:]
        assert {s: m.version for s, m in _assert_intact(s3).items()} == before
    # two runs at once
    procs = [s3.start(f"s3c{k}") for k in range(2)]
    for p in procs:
        p.wait(timeout=240)
    logs = [next(s3.home.glob(f"run-*-s3c{k}.log")).read_text() for k in range(2)]
    assert 0 in [p.returncode for p in procs], logs
    for p, text in zip(procs, logs, strict=True):
        assert p.returncode == 0 or "superseded by the commit of token" in text, text[-3000:]
    _assert_intact(s3)
    # killed at a random moment
    proc = s3.start("s3rand")  # killed at a random moment
    time.sleep(random.Random(5).uniform(0.1, 0.9) * s3.wall_s)
    _kill(proc)
    _assert_intact(s3)
