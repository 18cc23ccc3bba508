"""StepContext: everything a step needs to run, without Airflow.

The Airflow operators build one from the task context (Params, Connections,
data interval); the CLI builds one from flags; tests build one directly. Every
step module exposes ``run(ctx: StepContext) -> dict`` returning small JSON
(paths, counts, plans, metrics) that the operator pushes to XCom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from tasks.io.lake import Lake
from tasks.security import keyring, signing
from tasks.spec import DatasetSpec, spec_for

REPO = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Where embedded defaults live (lake, keyring, history DB): $LEPTONFLOW_HOME or ./var."""
    return Path(os.environ.get("LEPTONFLOW_HOME", REPO / "var"))


@dataclass
class StepContext:
    dataset: str
    ds: str  # data interval start as YYYY-MM-DD
    lake_url: str = ""
    interval_start: datetime | None = None
    interval_end: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history_url: str = ""  # SQLAlchemy URL of the run-history DB
    cluster: dict[str, Any] = field(default_factory=lambda: {"backend": "local"})
    keyring_path: str = ""
    artifacts_url: str = ""  # fsspec URL of the model artifact store
    run_id: str = "manual"
    spec_obj: DatasetSpec | None = None
    upstream: dict[str, Any] = field(default_factory=dict)  # small JSON results of earlier steps

    def __post_init__(self) -> None:
        home = default_home()
        self.lake_url = self.lake_url or os.environ.get("LEPTONFLOW_LAKE", str(home / "lake"))
        self.history_url = self.history_url or os.environ.get(
            "LEPTONFLOW_HISTORY_URL", f"sqlite:///{home / 'history.sqlite'}"
        )
        self.keyring_path = self.keyring_path or os.environ.get(
            "LEPTONFLOW_KEYRING", str(home / "keys" / "keyring.json")
        )
        self.artifacts_url = self.artifacts_url or os.environ.get("LEPTONFLOW_ARTIFACTS", str(home / "artifacts"))
        if self.interval_start is None:
            self.interval_start = datetime.fromisoformat(self.ds).replace(tzinfo=UTC)
        if self.interval_end is None:
            self.interval_end = self.interval_start + timedelta(days=1)

    @property
    def spec(self) -> DatasetSpec:
        if self.spec_obj is None:
            self.spec_obj = spec_for(self.dataset)
        return self.spec_obj

    @cached_property
    def keys(self) -> keyring.Keyring:
        return keyring.load(self.keyring_path)

    @cached_property
    def lake(self) -> Lake:
        """The lake, signing every manifest it commits and verifying every one it reads."""
        return Lake(self.lake_url, signer=signing.signer_for(self.keys), verifier=signing.verifier_for(self.keys))

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def plan(self, stage: str) -> dict[str, Any] | None:
        """The cluster plan the forecast sensor made for `stage` ("clean", "train"), if any."""
        return self.upstream.get(f"plan_{stage}")

    def crypto(self) -> Any:
        """The Parquet encryption to apply to lake writes (None when the `encrypt` Param is off)."""
        if not self.params.get("encrypt", True):
            return None
        from tasks.security import crypto  # lazy: only steps that write data need it
        return crypto.for_context(self)
