"""The lake's commit protocol: one commit record per step run, fencing tokens, GC that never deletes the winner.

Local disk and a real S3-protocol server on loopback (moto server mode, through s3fs): the same
assertions hold on both, because the protocol uses only create-only writes (a hard link locally,
``PUT If-None-Match: *`` on S3). The fault-injection suite with real step processes is
tests/integration/test_commit_faults.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import fsspec
import pyarrow as pa
import pytest

from tasks.context import StepContext
from tasks.errors import CommitConflict, FencedError, ManifestError, StorageError, UsageError
from tasks.io import commitlog, verified
from tasks.io.lake import MANIFEST, FileEntry, Lake, Manifest, version_token
from tasks.io.parquet import write_table
from tasks.security import signing
from tasks.security.keyring import generate
from tasks.spec import parse_interval
from tests.moto_server import moto_server

REPO = Path(__file__).resolve().parents[2]
DS = "2026-11-01"


def _lake(url: str, ring, grace: float = 0) -> Lake:
    return Lake(url, signer=signing.signer_for(ring), verifier=signing.verifier_for(ring), gc_grace_s=grace)


@pytest.fixture
def ring(tmp_path):
    return generate(tmp_path / "keys" / "keyring.json")


@pytest.fixture
def local(tmp_path, ring):
    return str(tmp_path / "lake")


@pytest.fixture(scope="module")
def s3_endpoint():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    bucket = f"lake-{abs(hash(request.node.name)) % 10**8}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint, "skip_instance_cache": True})
    return f"s3://{bucket}/root"


@pytest.fixture(params=["local", "s3"])
def url(request):
    return request.getfixturevalue(request.param)


def _write(lake: Lake, stage: str, ds: str, rows: int, tag: str = "") -> Manifest:
    """A version of `stage` with one data file (not committed)."""
    version, vdir = lake.new_version(stage, "events", ds)
    e = write_table(lake.full_url(f"{vdir}/part-0.parquet"), pa.table({"x": list(range(rows)), "t": [tag] * rows}),
                    f"v={version}/part-0.parquet")
    return Manifest(stage, "events", ds, version, [e], extra={"tag": tag})


def _intact(lake: Lake, stages=("clean", "quarantine"), ds: str = DS) -> dict[str, Manifest]:
    """Every committed file of `stages` matches its manifest (size + sha256), all from one record."""
    ms = lake.manifests("events", ds, stages)
    for m in ms.values():
        assert m is not None
        for f in m.files:
            verified.check_file(lake, m, f)
    return ms


def _folders(lake: Lake, stage: str, ds: str = DS) -> set[str]:
    return {n[2:] for n in commitlog.list_names(lake.fs, lake.interval_dir(stage, "events", ds), lake.local)
            if n.startswith("v=")}


# ---- one record per step run ------------------------------------------------------------------
def test_one_record_commits_every_stage_of_a_step_together(url, ring):
    lake = _lake(url, ring)
    c, q = _write(lake, "clean", DS, 5, "a"), _write(lake, "quarantine", DS, 2, "a")
    assert version_token(c.version) == version_token(q.version) > 0  # one writer, one token
    assert lake.manifest("clean", "events", DS) is None  # files written, nothing visible yet
    lake.commit(c, q)
    ms = _intact(lake)
    assert (ms["clean"].version, ms["quarantine"].version) == (c.version, q.version)
    assert ms["clean"].format == 2 and ms["clean"].token == version_token(c.version)
    rec = lake.log("events", DS).latest()
    assert rec.kind == "commit" and rec.changed == ["clean", "quarantine"]
    assert lake.manifest_path("clean", "events", DS).endswith(f"/v={c.version}/{MANIFEST}")
    # a second run replaces both at once; the superseded folders go (grace 0), the new ones stay
    c2, q2 = _write(lake, "clean", DS, 7, "b"), _write(lake, "quarantine", DS, 3, "b")
    lake.commit(c2, q2)
    ms = _intact(lake)
    assert {m.extra["tag"] for m in ms.values()} == {"b"}
    assert _folders(lake, "clean") == {c2.version} and _folders(lake, "quarantine") == {q2.version}
    assert lake.intervals("clean", "events") == [DS] and lake.intervals("split", "events") == []


def test_a_failed_second_manifest_write_leaves_the_previous_commit_whole(local, ring, monkeypatch):
    """The half-commit of the issue: clean's second manifest fails (ENOSPC); the old pair stays readable."""
    lake = _lake(local, ring)
    lake.commit(_write(lake, "clean", DS, 5, "old"), _write(lake, "quarantine", DS, 2, "old"))
    c, q = _write(lake, "clean", DS, 6, "new"), _write(lake, "quarantine", DS, 3, "new")
    real = commitlog.create_only

    def full_disk(fs, path, data, is_local):
        if path.endswith(f"v={q.version}/{MANIFEST}"):
            raise StorageError(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(fs, path, data, is_local)

    monkeypatch.setattr(commitlog, "create_only", full_disk)
    with pytest.raises(StorageError, match=rf"v={q.version}/_manifest.json: cannot write: No space left"):
        lake.commit(c, q)
    monkeypatch.setattr(commitlog, "create_only", real)
    lake.discard("clean", "events", DS, c.version)
    lake.discard("quarantine", "events", DS, q.version)
    lake.gc_grace_s = 0
    for stage in ("clean", "quarantine"):
        lake.collect_garbage(stage, "events", DS)  # "once the grace period passes"
    assert {m.extra["tag"] for m in _intact(lake).values()} == {"old"}


# ---- fencing ----------------------------------------------------------------------------------
def test_an_older_writer_can_neither_commit_over_nor_collect_the_winner(url, ring):
    a, b = _lake(url, ring, grace=3600), _lake(url, ring, grace=3600)
    a_clean = _write(a, "clean", DS, 5, "A")  # A starts first: the older token
    b_clean, b_q = _write(b, "clean", DS, 6, "B"), _write(b, "quarantine", DS, 1, "B")
    assert version_token(a_clean.version) < version_token(b_clean.version)
    b.commit(b_clean, b_q)
    # GC after B's commit deletes the folder of fenced-out A at once (no record ever named it), grace or not
    assert a_clean.version not in _folders(b, "clean")
    with pytest.raises(FencedError, match=r"superseded by the commit of token") as exc:
        a.commit(a_clean)
    assert exc.value.winner == version_token(b_clean.version) and exc.value.stage == "clean"
    with pytest.raises(FencedError, match="garbage collection .* refused"):
        a.collect_garbage("clean", "events", DS, token=version_token(a_clean.version))
    assert a.discard("clean", "events", DS, b_clean.version) is False  # a committed version is never discarded
    ms = _intact(b)
    assert ms["clean"].extra["tag"] == "B" and ms["quarantine"].extra["tag"] == "B"


def test_a_newer_writer_still_in_flight_keeps_its_folder(local, ring):
    lake = _lake(local, ring)
    first = _write(lake, "clean", DS, 3)
    late = _lake(local, ring)
    pending = _write(late, "clean", DS, 4)  # started after `first`, not committed yet
    lake.commit(first)
    assert pending.version in _folders(lake, "clean")  # its token is newer: it may still commit
    late.commit(pending)
    assert lake.require("clean", "events", DS).version == pending.version
    assert _folders(lake, "clean") == {pending.version}


def test_superseded_versions_stay_for_the_grace_period_and_never_the_committed_one(local, ring):
    lake = _lake(local, ring, grace=3600)
    first = lake.commit(_write(lake, "clean", DS, 3))
    second = lake.commit(_write(lake, "clean", DS, 4))
    assert _folders(lake, "clean") == {first.version, second.version}  # readers of `first` can finish
    lake.gc_grace_s = 0
    assert lake.collect_garbage("clean", "events", DS) == [first.version]
    lake.gc_grace_s = -1e9  # a clock far in the future: the committed version still stays
    assert lake.collect_garbage("clean", "events", DS) == [] and _folders(lake, "clean") == {second.version}


def test_a_read_modify_write_commit_is_refused_when_another_came_between(local, ring):
    lake = _lake(local, ring)
    base = lake.commit(_write(lake, "validation", DS, 1, "raw"))
    mine = _write(lake, "validation", DS, 1, "mine")
    other = _lake(local, ring)
    other.commit(_write(other, "validation", DS, 1, "other"))
    with pytest.raises(FencedError):  # newer token committed: fenced before the expectation is even looked at
        lake.commit(mine, expect={"validation": base.version})
    late = _write(lake, "validation", DS, 1, "late")  # newer token than `other`, computed from `base`
    with pytest.raises(CommitConflict, match="was committed since"):
        lake.commit(late, expect={"validation": base.version})
    assert lake.require("validation", "events", DS).extra["tag"] == "other"


def test_recommitting_the_committed_version_resigns_it_and_a_superseded_one_is_refused(local, ring):
    lake = _lake(local, ring)
    m = lake.commit(_write(lake, "clean", DS, 3))
    reread = lake.require("clean", "events", DS)
    reread.files[0].key_id = "mk-rotated"
    lake.commit(reread)  # key rotation: same version, new manifest file, new record
    now = lake.require("clean", "events", DS)
    assert now.version == m.version and now.files[0].key_id == "mk-rotated" and now.token > m.token
    assert lake.manifest_path("clean", "events", DS).rsplit("/", 1)[-1].startswith("_manifest-")
    stale = lake.require("clean", "events", DS)
    lake.commit(_write(lake, "clean", DS, 9))
    with pytest.raises(CommitConflict):
        lake.commit(stale)


# ---- tampering, crashes, old lakes ----------------------------------------------------------------
def test_a_crash_before_the_record_leaves_nothing_visible(local, ring):
    lake = _lake(local, ring)
    old = lake.commit(_write(lake, "clean", DS, 3))
    m = _write(lake, "clean", DS, 8)
    lake._write_manifest(m, version_token(m.version))  # the process dies right after its manifest
    assert lake.require("clean", "events", DS).version == old.version
    fresh = _lake(local, ring)
    fresh.commit(_write(fresh, "clean", DS, 4))  # the next writer collects the dead one's folder
    assert m.version not in _folders(lake, "clean")


def test_edited_or_swapped_records_and_manifests_are_refused(local, ring):
    lake = _lake(local, ring)
    lake.commit(_write(lake, "clean", DS, 3, "one"))
    lake.commit(_write(lake, "clean", DS, 4, "two"))
    # a manifest swapped for another validly signed one (of an uncommitted version) is not the committed one
    other = _write(lake, "clean", DS, 9, "forged")
    lake._write_manifest(other, version_token(other.version))
    committed = Path(lake.manifest_path("clean", "events", DS))
    saved = committed.read_bytes()
    committed.write_bytes(Path(lake.interval_dir("clean", "events", DS), f"v={other.version}", MANIFEST).read_bytes())
    with pytest.raises(ManifestError, match="is not the manifest commit record"):
        lake.require("clean", "events", DS)
    committed.write_bytes(saved)
    log = lake.log("events", DS)
    seq = log.slots()[0][-1]
    path = Path(log.path(seq))
    good = path.read_bytes()
    doc = json.loads(good)
    doc["stages"]["clean"]["version"] = "x"
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="commit record signature check failed"):
        lake.require("clean", "events", DS)
    path.write_bytes(Path(log.path(seq - 2)).read_bytes())  # rollback: an older signed record in the latest slot
    with pytest.raises(ManifestError, match="found in slot"):
        lake.require("clean", "events", DS)
    path.write_bytes(good)
    assert lake.require("clean", "events", DS).extra["tag"] == "two"


def test_an_interval_committed_before_the_log_stays_readable_and_is_imported(local, ring):
    lake = _lake(local, ring)
    version, vdir = "20261101T000000-abcdef12", f"{lake.interval_dir('clean', 'events', DS)}/v=20261101T000000-abcdef12"
    e = write_table(f"{vdir}/part-0.parquet", pa.table({"x": [1, 2]}), f"v={version}/part-0.parquet")
    legacy = Manifest("clean", "events", DS, version, [e], rows=2)  # format 1: signed without format/token
    legacy.signature = lake.signer(legacy.payload())
    Path(f"{lake.interval_dir('clean', 'events', DS)}/{MANIFEST}").write_text(legacy.to_json())
    assert "format" not in json.loads(legacy.to_json())
    assert lake.require("clean", "events", DS).version == version and lake.intervals("clean", "events") == [DS]
    lake.commit(_write(lake, "quarantine", DS, 1))  # the interval's first record imports clean
    assert lake.require("clean", "events", DS).version == version
    assert _intact(lake)["clean"].format == 1
    new = lake.commit(_write(lake, "clean", DS, 3))
    assert lake.require("clean", "events", DS).version == new.version and version not in _folders(lake, "clean")


def test_a_stale_writer_recreating_a_pruned_slot_is_not_read_as_the_state(local, ring, monkeypatch):
    lake = _lake(local, ring)
    for i in range(40):
        lake.commit(_write(lake, "clean", DS, 1, str(i)))
    log = lake.log("events", DS)
    seqs, floor = log.slots()
    assert floor > 1 and len(seqs) <= 2 * commitlog.KEEP_RECORDS and not os.path.exists(log.path(1))
    # a writer that read the state when seq 1 was the latest and slept: it creates slot 2 (pruned)
    stale = log.read(seqs[-1])
    stale.seq = 1
    real_latest, calls = commitlog.CommitLog.latest, []

    def first_stale(self, verify=True):
        calls.append(1)
        return stale if len(calls) == 1 else real_latest(self, verify)

    monkeypatch.setattr(commitlog.CommitLog, "latest", first_stale)
    rec = log.append(lambda latest: commitlog.Record("commit", token=10**6, stages=dict(latest.stages)))
    monkeypatch.setattr(commitlog.CommitLog, "latest", real_latest)
    assert rec.seq > seqs[-1]  # found itself below the floor, deleted its stray record and appended for real
    assert not os.path.exists(log.path(2))
    assert lake.require("clean", "events", DS).extra["tag"] == "39"


# ---- errors that name things --------------------------------------------------------------------
def test_a_full_disk_names_the_file(tmp_path):
    with pytest.raises(StorageError, match=r"^/dev/full: cannot write: No space left on device") as exc:
        write_table("/dev/full", pa.table({"x": list(range(10_000))}), "full.parquet")  # a real ENOSPC
    assert exc.value.errno == errno.ENOSPC and isinstance(exc.value, OSError)
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(StorageError, match="/dev/full: cannot write"):
        lake.put_bytes("/dev", "v", "full", b"x" * 100_000)


@pytest.mark.parametrize("bad", ["20261125", "2026-11-25T00:00:00", "2026-02-30", "2026-13-01", "", "yesterday"])
def test_an_interval_that_is_no_real_date_is_a_usage_error(bad, lf_home):
    with pytest.raises(UsageError, match="argument ds"):
        StepContext(dataset="events", ds=bad)
    assert parse_interval("2026-11-25T10")[1].total_seconds() == 3600
    with pytest.raises(UsageError, match="dataset's intervals are days"):
        StepContext(dataset="events", ds="2026-11-25T10").check_interval()


def test_the_cli_refuses_a_bad_ds_naming_the_argument(lf_home):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    out = subprocess.run([sys.executable, "-m", "tasks", "clean", "--dataset", "events", "--ds", "20261125"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "error: argument --ds: '20261125' is not an interval name" in out.stderr


def test_verify_artifact_on_something_else_says_it_is_not_an_artifact(tmp_path, ring):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    lake_like, listing = tmp_path / "a-lake-manifest", tmp_path / "a-list"
    for folder, doc in ((lake_like, {"stage": "clean", "files": [{"path": "v=1/p.parquet"}], "signature": ""}),
                        (listing, [{"files": []}])):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(doc))
    for target, says in ((lake_like, "not a leptonflow artifact manifest"), (listing, "not a leptonflow artifact"),
                         (tmp_path, "no manifest.json")):
        out = subprocess.run([sys.executable, "-m", "tasks", "verify-artifact", str(target), "--keyring",
                              str(tmp_path / "keys" / "keyring.json"), "--no-state"],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert out.returncode == 1 and "REFUSED" in out.stderr and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_fileentry_paths_and_digests_are_what_the_writer_wrote(local, ring):
    """Readers get exactly the committed bytes: the manifest is checked against the record's sha256."""
    lake = _lake(local, ring)
    m = _write(lake, "clean", DS, 5)
    lake.commit(m)
    path = lake.manifest_path("clean", "events", DS)
    ref = lake.log("events", DS).latest().stages["clean"]
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == ref.sha256
    assert ref.versions == (m.version,) and isinstance(m.files[0], FileEntry)
