"""Parquet Modular Encryption of lake files: real pyarrow PME, real keyring files, real Dask workers."""

from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from tasks.context import StepContext
from tasks.errors import SettingError
from tasks.io import parquet as parquet_io
from tasks.io.lake import ManifestError
from tasks.security import crypto, keyring, rotation
from tasks.security.keyring import KeyringError
from tests.unit.secure_data import commit_table, events

DS = "2026-11-03"


@pytest.fixture
def ctx(lf_home) -> StepContext:
    return StepContext(dataset="events", ds=DS)


def _write(ctx: StepContext, tmp_path: Path, n: int = 2000, name: str = "f.parquet"):
    url = str(tmp_path / "data" / name)
    entry = parquet_io.write_table(url, events(n, DS), name, crypto=ctx.crypto())
    return url, entry


def test_encrypted_file_reads_with_keys_only(ctx, tmp_path):
    url, entry = _write(ctx, tmp_path)
    assert entry.key_id == ctx.keys.active
    assert Path(url).read_bytes()[-4:] == b"PARE"  # encrypted footer magic
    assert Path(crypto.key_material_url(url)).exists()
    assert parquet_io.read_table(url, ctx.crypto()).equals(events(2000, DS))
    with pytest.raises(parquet_io.ParquetReadError, match=str(url)):
        parquet_io.read_table(url, None)
    with pytest.raises(OSError):  # a plain pyarrow reader without keys cannot read it either
        pq.read_table(url)
    # the plaintext of a PII column never appears in the file bytes
    assert b"user0@example.com" not in Path(url).read_bytes()


def test_plain_pyarrow_reader_with_the_key_reads_it(ctx, tmp_path):
    url, _ = _write(ctx, tmp_path)
    ring = keyring.load(ctx.keyring_path)
    factory = pe.CryptoFactory(lambda _cfg: crypto.RingKms(ring, ring.active))
    props = factory.file_decryption_properties(pe.KmsConnectionConfig(), parquet_file_path=url)
    assert pq.read_table(url, decryption_properties=props).num_rows == 2000


class _NoPiiKms(pe.KmsClient):
    """A reader that holds the data and footer keys but not the PII key."""

    def __init__(self, ring):
        super().__init__()
        self.ring = ring

    def wrap_key(self, key_bytes, master_key_identifier):
        raise AssertionError("reader never wraps")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        if master_key_identifier == crypto.ROLE_PII:
            raise KeyringError("no access to PII")
        return crypto.unwrap(self.ring, master_key_identifier, wrapped_key)


def test_pii_columns_are_under_their_own_key(ctx, tmp_path):
    assert set(ctx.crypto().pii_columns) == {"user_id", "email"}
    url, _ = _write(ctx, tmp_path)
    side = json.loads(Path(crypto.key_material_url(url)).read_text())
    roles = {json.loads(v)["masterKeyID"] for v in side.values() if v.startswith("{")}
    assert roles == {crypto.ROLE_FOOTER, crypto.ROLE_DATA, crypto.ROLE_PII}
    ring = keyring.load(ctx.keyring_path)
    props = pe.CryptoFactory(lambda _cfg: _NoPiiKms(ring)).file_decryption_properties(
        pe.KmsConnectionConfig(), parquet_file_path=url
    )
    pf = pq.ParquetFile(url, decryption_properties=props)
    assert pf.read(columns=["price", "device"]).num_rows == 2000
    with pytest.raises(KeyringError, match="no access to PII"):
        pf.read(columns=["email"])


def test_crypto_object_is_small_picklable_and_carries_no_key(ctx):
    c = ctx.crypto()
    blob = pickle.dumps(c)
    assert len(blob) < 1024
    for s in keyring.key_material_fingerprints(ctx.keys):
        assert s.encode() not in blob
    assert pickle.loads(blob) == c


def _write_on_worker(c, url: str, seed: int):
    return parquet_io.write_table(url, events(500, DS, seed=seed), url.rsplit("/", 1)[1], crypto=c)


def test_dask_workers_encrypt_with_their_own_keyring_load(ctx, tmp_path):
    from distributed import Client, LocalCluster

    c = ctx.crypto()
    urls = [str(tmp_path / "w" / f"part-{i}.parquet") for i in range(3)]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            entries = client.gather([client.submit(_write_on_worker, c, u, i) for i, u in enumerate(urls)])
    for u, e in zip(urls, entries, strict=True):
        assert e.key_id == ctx.keys.active
        assert parquet_io.sha256_of(u) == e.sha256
        assert parquet_io.read_table(u, c).num_rows == 500
        with pytest.raises(parquet_io.ParquetReadError):
            parquet_io.read_table(u, None)


def test_worker_without_the_keyring_fails_instead_of_inventing_a_key(ctx, tmp_path):
    c = ctx.crypto()
    moved = crypto.LakeCrypto(key_id=c.key_id, keyring_path=str(tmp_path / "nowhere" / "keyring.json"))
    with pytest.raises(KeyringError, match="no keyring at"):
        parquet_io.write_table(str(tmp_path / "x.parquet"), events(10, DS), "x.parquet", crypto=moved)
    assert not (tmp_path / "nowhere").exists()


def test_wrong_key_material_for_the_id_is_a_clear_error(ctx, tmp_path):
    url, entry = _write(ctx, tmp_path)
    other = keyring.load(ctx.keyring_path)
    other.master_keys[entry.key_id] = keyring.new_key()  # same id, different bytes
    other_path = tmp_path / "other.json"
    other.save(other_path)
    wrong = crypto.LakeCrypto(key_id=entry.key_id, keyring_path=str(other_path))
    with pytest.raises(parquet_io.ParquetReadError, match=rf"{url}.*{entry.key_id}.*does not unwrap"):
        parquet_io.read_table(url, wrong)


def test_missing_key_is_a_clear_error(ctx, tmp_path):
    url, entry = _write(ctx, tmp_path)
    other = keyring.generate(tmp_path / "another.json")  # a keyring that never held the file's key
    stranger = crypto.LakeCrypto(key_id=other.active, keyring_path=other.path)
    with pytest.raises(parquet_io.ParquetReadError, match=rf"{url}.*{entry.key_id}.*not in the keyring"):
        parquet_io.read_table(url, stranger)


def test_revoked_key_is_a_clear_error_on_read_and_write(ctx, tmp_path):
    url, entry = _write(ctx, tmp_path)
    ring = keyring.load(ctx.keyring_path)
    keyring.add_master_key(ring)
    keyring.revoke(ring, entry.key_id)
    ring.save()
    with pytest.raises(parquet_io.ParquetReadError, match=rf"{url}.*{entry.key_id}.*revoked"):
        parquet_io.read_table(url, ctx.crypto())
    stale = crypto.LakeCrypto(key_id=entry.key_id, keyring_path=ctx.keyring_path)  # made before the revocation
    with pytest.raises(KeyringError, match=rf"{entry.key_id}.*revoked"):
        parquet_io.write_table(str(tmp_path / "new.parquet"), events(10, DS), "new.parquet", crypto=stale)


def test_flipped_byte_fails_the_read_naming_the_file(ctx, tmp_path):
    url, _ = _write(ctx, tmp_path, n=5000)
    good = Path(url).read_bytes()
    for frac in (0.1, 0.5, 0.9):
        bad = bytearray(good)
        bad[int(len(bad) * frac)] ^= 0x01
        Path(url).write_bytes(bytes(bad))
        with pytest.raises(parquet_io.ParquetReadError, match=str(url)):
            parquet_io.read_table(url, ctx.crypto())
    Path(url).write_bytes(good)
    assert parquet_io.read_table(url, ctx.crypto()).num_rows == 5000


def _clean_files(ctx):
    m = ctx.lake.require("clean", ctx.dataset, ctx.ds)
    return m, [Path(ctx.lake.abspath(m, e)) for e in m.files]


@pytest.mark.parametrize("update_manifests", [False, True], ids=["manifests-kept", "manifests-updated"])
def test_rotation_rewraps_without_rewriting_data(ctx, tmp_path, capsys, update_manifests):
    commit_table(ctx, "clean", {"": events(3000, DS), "b": events(1000, DS, seed=1)}, ctx.crypto())
    old_id = ctx.keys.active
    m0, paths = _clean_files(ctx)
    before = {p: p.read_bytes() for p in paths}
    sides_before = {p: Path(crypto.key_material_url(str(p))).read_bytes() for p in paths}

    argv = ["--keyring", ctx.keyring_path, "--lake", ctx.lake_url, "--dataset", "events"]
    assert rotation.cli(argv + (["--update-manifests"] if update_manifests else [])) == 0
    out = json.loads(capsys.readouterr().out)
    fresh = StepContext(dataset="events", ds=DS)  # a new task sees the rotated keyring
    new_id = fresh.keys.active
    assert new_id != old_id and out["active"] == new_id and out["files"] == 2 and out["manifests"] == 1
    assert out["previous_key_ids"] == [old_id] and out["manifests_updated"] == int(update_manifests)

    m1, paths1 = _clean_files(fresh)  # signature verified with the (unchanged) signing key
    assert paths1 == paths and m1.version == m0.version
    for p in paths:
        assert p.read_bytes() == before[p]  # data files untouched
        assert parquet_io.sha256_of(str(p)) == next(e.sha256 for e in m1.files if p.name in e.path)
        assert Path(crypto.key_material_url(str(p))).read_bytes() != sides_before[p]
        assert crypto.file_key_ids(str(p)) == {new_id}
    if update_manifests:
        assert {e.key_id for e in m1.files} == {new_id} and m1.digest() != m0.digest()
    else:  # downstream cache keys (manifest digests) are unchanged: no recompute after a rotation
        assert {e.key_id for e in m1.files} == {old_id} and m1.digest() == m0.digest()

    # the old key can now be revoked and everything still reads
    ring = keyring.load(fresh.keyring_path)
    keyring.revoke(ring, old_id)
    ring.save()
    reader = StepContext(dataset="events", ds=DS).crypto()
    assert sum(parquet_io.read_table(str(p), reader).num_rows for p in paths) == 4000
    url, entry = _write(StepContext(dataset="events", ds=DS), tmp_path, name="after.parquet")
    assert entry.key_id == new_id and crypto.file_key_ids(url) == {new_id}


def test_rotation_without_rewrap_keeps_old_files_readable(ctx, tmp_path):
    url, entry = _write(ctx, tmp_path)
    assert rotation.cli(["--keyring", ctx.keyring_path]) == 0
    fresh = StepContext(dataset="events", ds=DS)
    assert fresh.keys.active != entry.key_id
    assert parquet_io.read_table(url, fresh.crypto()).num_rows == 2000  # old key still in the ring
    _, new_entry = _write(fresh, tmp_path, name="new.parquet")
    assert new_entry.key_id == fresh.keys.active
    # later (or after an interrupted rotation) re-wrap committed files under the active key, no new key
    commit_table(fresh, "clean", {"": events(100, DS)}, ctx.crypto())  # a file still under the old key
    m, paths = _clean_files(fresh)
    assert crypto.file_key_ids(str(paths[0])) == {entry.key_id}
    assert rotation.cli(["--keyring", ctx.keyring_path, "--rewrap-only", "--lake", ctx.lake_url]) == 0
    assert crypto.file_key_ids(str(paths[0])) == {fresh.keys.active}
    assert keyring.load(ctx.keyring_path).master_keys.keys() == fresh.keys.master_keys.keys()


def test_rotation_refuses_a_tampered_manifest(ctx):
    commit_table(ctx, "clean", {"": events(500, DS)}, ctx.crypto())
    m, paths = _clean_files(ctx)
    mpath = Path(ctx.lake.manifest_path("clean", "events", DS))
    doc = json.loads(mpath.read_text())
    doc["files"][0]["rows"] += 1
    mpath.write_text(json.dumps(doc))
    side = Path(crypto.key_material_url(str(paths[0]))).read_bytes()
    with pytest.raises(ManifestError, match="signature"):
        rotation.cli(["--keyring", ctx.keyring_path, "--lake", ctx.lake_url, "--dataset", "events"])
    assert Path(crypto.key_material_url(str(paths[0]))).read_bytes() == side


def test_a_keyring_document_in_the_environment_is_refused(ctx, monkeypatch):
    """It would reach every worker's environment: refused, naming the variable and the way out."""
    monkeypatch.setenv("LEPTONFLOW_KEYRING_JSON", json.dumps(ctx.keys.to_doc()))
    with pytest.raises(SettingError, match="LEPTONFLOW_KEYRING_JSON.*0600 file.*LEPTONFLOW_KEYRING"):
        StepContext(dataset="events", ds=DS)


def test_a_keyring_document_reaches_tasks_and_workers_as_a_private_file(lf_home, tmp_path):
    ring = keyring.generate(tmp_path / "secret.json")  # what a Connection / secrets backend would hold
    path = keyring.private_copy(ring.to_doc())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert keyring.private_copy(ring.to_doc()) == path  # one copy per document, not one per task
    ctx = StepContext(dataset="events", ds=DS, keyring_path=str(path))
    c = ctx.crypto()
    assert c.key_id == ring.active and c.keyring_path == str(path)
    url, entry = _write(ctx, tmp_path)
    assert entry.key_id == ring.active
    assert parquet_io.read_table(url, pickle.loads(pickle.dumps(c))).num_rows == 2000
    with pytest.raises(KeyringError, match="never pickled"):
        pickle.dumps(ctx.keys)


def test_wrapped_keys_are_bound_to_role_and_key_id(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    first = ring.active
    second = keyring.add_master_key(ring)
    dek = bytes(range(32))
    wrapped = crypto.wrap(ring, first, crypto.ROLE_DATA, dek)
    assert wrapped.startswith(f"lf1:{first}:") and dek.hex() not in wrapped
    assert crypto.unwrap(ring, crypto.ROLE_DATA, wrapped) == dek
    with pytest.raises(KeyringError, match=f"{first}.*does not unwrap the lf-pii key"):
        crypto.unwrap(ring, crypto.ROLE_PII, wrapped)  # a data key cannot pose as a PII key
    with pytest.raises(KeyringError, match=f"{second}.*does not unwrap"):
        crypto.unwrap(ring, crypto.ROLE_DATA, wrapped.replace(first, second))  # nor claim another key
    with pytest.raises(KeyringError, match="malformed"):
        crypto.unwrap(ring, crypto.ROLE_DATA, wrapped[:-6] + "!!!!!!")
    with pytest.raises(KeyringError, match="not in leptonflow's format"):
        crypto.unwrap(ring, crypto.ROLE_DATA, "aws-kms:" + wrapped)
