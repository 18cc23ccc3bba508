"""Master-key rotation: a new key for new writes, and every committed file re-wrapped under it.

``python -m tasks rotate-keys --keyring PATH [--lake URL [--dataset D]] [--rewrap-only] [--update-manifests]``

Re-wrapping rewrites each encrypted file's key-material sidecar (``rotate_master_keys`` of PME),
never a data file, so the manifests' sha256 stay valid. Sealed intervals stay sealed: the seal
of an interval (:mod:`tasks.security.secure`) is checked before any of its files is touched and
re-recorded after, so ``secure``'s seal check and training keep working on every earlier interval,
and the old key can then be revoked. A seal that does not hold before the rotation (tampered
meanwhile) stops the rotation before anything is re-wrapped: it is never re-sealed.

A crash in the middle of one interval leaves that interval's seal stale (its sidecars were
re-wrapped, its seal not yet re-recorded): re-run ``secure`` for it, which verifies every file
afresh (every page decrypts and authenticates) before sealing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tasks.errors import IntegrityError, KeyringError
from tasks.io.lake import Lake, Manifest
from tasks.security import crypto, keyring, secure, signing
from tasks.security.crypto import CryptoError
from tasks.security.keyring import Keyring

log = logging.getLogger(__name__)


def _committed(lake: Lake, dataset: str | None) -> dict[tuple[str, str], list[Manifest]]:
    """Every committed (signature-verified) manifest but raw's, by (dataset, interval)."""
    groups: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
    for stage_path in sorted(lake.fs.ls(lake.root, detail=False)):
        stage = stage_path.rstrip("/").rsplit("/", 1)[-1]
        if stage == "raw" or stage.startswith(("_", ".")) or not lake.fs.isdir(stage_path):
            continue  # the landing zone, the commit log
        names = [dataset] if dataset else [p.rstrip("/").rsplit("/", 1)[-1] for p in lake.fs.ls(stage_path)]
        for name in names:
            for ds in lake.intervals(stage, name):
                groups[(name, ds)].append(lake.require(stage, name, ds))  # a bad signature stops here
    return groups


def rotate_lake(
    lake_url: str, ring: Keyring, dataset: str | None = None, update_manifests: bool = False
) -> dict[str, Any]:
    """Re-wrap every encrypted file of committed manifests under the ring's wrap key; keep seals valid.

    Every manifest's signature and every seal is checked before anything is touched. With
    `update_manifests` the ``key_id`` entries are rewritten and re-signed (their digests change:
    downstream caches miss once); by default manifests stay byte-identical.
    """
    lake = Lake(lake_url, signer=signing.signer_for(ring), verifier=signing.verifier_for(ring))
    if not lake.fs.exists(lake.root):
        raise CryptoError(f"no lake at {lake_url}")
    new_id = ring.wrap_key_id
    lake_crypto = crypto.for_ring(ring)
    groups = _committed(lake, dataset)
    seals = {k: m for k, ms in groups.items() for m in ms if m.stage == "secure"}
    for (name, ds), seal in seals.items():
        try:
            secure.check_seal(lake, seal)
        except IntegrityError as exc:
            raise CryptoError(f"{name} ds={ds}: its seal does not hold before the rotation, so nothing was "
                              f"re-wrapped: {exc}") from exc
    summary: dict[str, Any] = {"key_id": new_id, "files": 0, "manifests": 0, "manifests_updated": 0,
                               "seals_updated": 0, "previous_key_ids": []}
    previous: set[str] = set()
    for (name, ds), manifests in sorted(groups.items()):
        before: set[str] = set()
        for m in manifests:
            changed = False
            for entry in m.files:
                if not entry.key_id or not entry.path.endswith(".parquet"):
                    continue
                url = lake.full_url(lake.abspath(m, entry))
                before |= crypto.file_key_ids(url)
                crypto.rotate_file(url, ring, new_id)
                changed = changed or entry.key_id != new_id
                entry.key_id = new_id
                summary["files"] += 1
            if any(e.key_id for e in m.files):
                summary["manifests"] += 1
            if changed and update_manifests:
                lake.commit(m)  # same version: re-signed in place, nothing discarded
                summary["manifests_updated"] += 1
        previous |= before
        if (name, ds) in seals:
            rotation = {"at": time.time(), "key_id": new_id, "previous_key_ids": sorted(before - {new_id}),
                        "manifests_updated": bool(update_manifests)}
            secure.reseal(lake, seals[(name, ds)], lake_crypto, rotation)
            summary["seals_updated"] += 1
    summary["previous_key_ids"] = sorted(previous - {new_id})
    return summary


def cli(argv: list[str], default_keyring: str = "") -> int:
    """``python -m tasks rotate-keys --keyring PATH [--lake URL [--dataset D]] [--rewrap-only] [--update-manifests]``.

    Adds a master key and makes it active (new writes use it), then re-wraps the keys of
    every committed encrypted file of the lake under it, without rewriting data files, and
    re-records the seals. Old keys stay in the keyring for reading until revoked
    (``python -m tasks keys revoke MK_ID``). With a KMS in the keyring, the KMS rotates its
    own key material (AWS KMS automatic rotation: nothing to re-wrap); ``--rewrap-only``
    moves files wrapped by local master keys (or another KMS key) under the KMS key.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m tasks rotate-keys", description=cli.__doc__)
    p.add_argument("--keyring", default=default_keyring or None, help="keyring file (0600)")
    p.add_argument("--lake", help="lake root URL whose files get re-wrapped under the new key")
    p.add_argument("--dataset", help="only this dataset (default: every dataset of the lake)")
    p.add_argument("--rewrap-only", action="store_true", help="no new key: re-wrap under the current active key")
    p.add_argument("--update-manifests", action="store_true",
                   help="also rewrite FileEntry.key_id and re-sign manifests (downstream cache keys change)")
    args = p.parse_args(argv)
    if not args.keyring:
        p.error("--keyring is required (or set LEPTONFLOW_KEYRING)")
    if args.dataset and not args.lake:
        p.error("--dataset needs --lake")
    path = Path(args.keyring)
    ring = keyring.load(path)
    old = ring.wrap_key_id
    if not args.rewrap_only:
        if ring.kms:
            raise KeyringError(f"keyring {path} wraps with KMS key {ring.wrap_key_id!r}: the KMS rotates its key "
                               "material itself; to move to another KMS key change kms.key_id and run "
                               "--rewrap-only")
        keyring.add_master_key(ring)
        ring.save()  # before any re-wrap: files must never be wrapped by a key that is not stored
    result: dict[str, Any] = {"keyring": str(path), "previous_active": old, "active": ring.wrap_key_id}
    if args.lake:
        result.update(rotate_lake(args.lake, ring, args.dataset, update_manifests=args.update_manifests))
    print(json.dumps(result, indent=1))
    return 0
