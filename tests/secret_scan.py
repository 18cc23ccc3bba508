"""Scan for leaked key material: every secret of a keyring in every form it could leak in.

`keyring.secret_forms(ring)` gives the raw bytes and the text forms (base64 standard and URL-safe at
every alignment, hex in both cases) of each master key, Ed25519 private key and legacy MAC key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.security import keyring


@dataclass
class ScanResult:
    items: int = 0
    bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    hits: list[tuple[str, str]] = field(default_factory=list)  # (item, which form: never the secret itself)

    def summary(self, forms: int, secrets: int) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        return (f"secret scan: {self.items} items ({self.bytes} bytes: {kinds}) x {forms} forms of {secrets} "
                f"secrets: {len(self.hits)} hits")


def scan(ring: keyring.Keyring, items: Iterable[tuple[str, str, bytes]]) -> ScanResult:
    """Count each (kind, name, content) item and every secret form found in it."""
    forms = keyring.secret_forms(ring)
    out = ScanResult()
    for kind, name, data in items:
        out.items += 1
        out.bytes += len(data)
        out.by_kind[kind] = out.by_kind.get(kind, 0) + 1
        for i, form in enumerate(forms):
            if form in data:
                out.hits.append((f"{kind}:{name}", f"form #{i} ({len(form)} bytes)"))
    return out


def kind_of(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("lake/_commits/"):
        return "commit records"
    if name.startswith("_manifest") or name == "manifest.json" or name == "latest.json":
        return "manifests"
    if rel.startswith("artifacts/"):
        return "artifacts"
    if name.startswith("_KEY_MATERIAL_FOR_"):
        return "key material sidecars"
    if name.endswith(".html"):
        return "html"
    if rel.startswith("lake/"):
        return "lake files"
    return "other"


def files(root: Path, exclude: tuple[str, ...] = ()) -> list[tuple[str, str, bytes]]:
    """Every file under `root` (but the `exclude` subfolders) as a scan item."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(rel == e or rel.startswith(e + "/") for e in exclude):
            out.append((kind_of(rel), rel, p.read_bytes()))
    return out
