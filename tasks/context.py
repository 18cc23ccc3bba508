"""StepContext: the one object a step receives, and Settings: the one reader of the environment.

The Airflow operators build a StepContext from the task context (Params, Connections through
hooks, the data interval, upstream XComs); the CLI builds one from flags; tests build one
directly. A step reads its settings with ``ctx.param(name)``: the typed value declared in
:mod:`tasks.params`, with the run's overrides applied. Nothing below this module reads
environment variables: :class:`Settings` reads the ``LEPTONFLOW_*`` variables once, for the
CLI and for defaults a Connection does not give.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tasks import params as settings_decl
from tasks.errors import KeyringError, SettingError
from tasks.io.lake import Lake
from tasks.security import keyring, signing
from tasks.security.kms import KmsConfig
from tasks.spec import SPEC_DIR, DatasetSpec, parse_interval, spec_for

REPO = Path(__file__).resolve().parent.parent
ENV_VARS = {
    "LEPTONFLOW_HOME": "folder of the embedded defaults (lake, keyring, history DB, artifacts); default ./var",
    "LEPTONFLOW_LAKE": "lake root URL (default <home>/lake)",
    "LEPTONFLOW_HISTORY_URL": "SQLAlchemy URL of the run-history DB (default sqlite:///<home>/history.sqlite)",
    "LEPTONFLOW_KEYRING": "keyring file, mode 0600 (default <home>/keys/keyring.json; `python -m tasks keys init`)",
    "LEPTONFLOW_KMS": "KMS that wraps new files' keys, a JSON object such as "
                      '{"backend": "aws-kms", "key_id": "alias/leptonflow", "region": "eu-west-1"}',
    "LEPTONFLOW_ARTIFACTS": "model artifact store URL (default <home>/artifacts)",
    "LEPTONFLOW_ARTIFACTS_OPTIONS": "fsspec storage options of the artifact store, a JSON object",
    "LEPTONFLOW_GC_GRACE_S": "seconds a superseded lake version is kept for readers of the previous commit "
                             "(the committed version is never deleted)",
    "LEPTONFLOW_SPECS": "folder of the dataset spec YAML files (default <repo>/dags/datasets)",
}


@dataclass(frozen=True)
class Settings:
    """Locations and store options from the environment (see ENV_VARS), read once by :meth:`from_env`."""

    home: Path
    lake_url: str
    history_url: str
    keyring_path: str
    kms: dict[str, Any] | None
    artifacts_url: str
    artifacts_options: dict[str, Any]
    gc_grace_s: float
    specs_dir: Path = SPEC_DIR

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("LEPTONFLOW_HOME") or REPO / "var")
        opts = _json_object(env, "LEPTONFLOW_ARTIFACTS_OPTIONS") or {}
        if env.get("LEPTONFLOW_KEYRING_JSON"):
            raise SettingError("LEPTONFLOW_KEYRING_JSON", "is no longer read: a keyring document in the environment "
                               "reaches every worker process; write it to a 0600 file and set LEPTONFLOW_KEYRING, "
                               "or give it as the leptonflow_keys Connection")
        kms = _json_object(env, "LEPTONFLOW_KMS")
        if kms is not None:
            try:
                KmsConfig.from_dict(kms, "LEPTONFLOW_KMS")
            except KeyringError as exc:
                raise SettingError("LEPTONFLOW_KMS", str(exc).removeprefix("LEPTONFLOW_KMS: ")) from None
        try:
            grace = float(env.get("LEPTONFLOW_GC_GRACE_S") or 300)
        except ValueError:
            raise SettingError("LEPTONFLOW_GC_GRACE_S", "must be a number of seconds") from None
        return cls(
            home=home,
            lake_url=env.get("LEPTONFLOW_LAKE") or str(home / "lake"),
            history_url=env.get("LEPTONFLOW_HISTORY_URL") or f"sqlite:///{home / 'history.sqlite'}",
            keyring_path=env.get("LEPTONFLOW_KEYRING") or str(home / "keys" / "keyring.json"),
            kms=kms,
            artifacts_url=env.get("LEPTONFLOW_ARTIFACTS") or str(home / "artifacts"),
            artifacts_options=opts,
            gc_grace_s=grace,
            specs_dir=Path(env.get("LEPTONFLOW_SPECS") or SPEC_DIR),
        )


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = env.get(name) or ""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingError(name, f"is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SettingError(name, "must be a JSON object")
    return value


def default_home() -> Path:
    """Where embedded defaults live (lake, keyring, history DB): $LEPTONFLOW_HOME or ./var."""
    return Settings.from_env().home


@dataclass
class StepContext:
    """What a step runs on: the dataset and interval, the stores, the cluster backend, settings, upstream results.

    `params` holds the run's setting overrides (Params of the DAG run, CLI flags); ``param(name)``
    gives the resolved, typed value of any declared setting. Locations left empty take the
    :class:`Settings` defaults.
    """

    dataset: str
    ds: str  # the data interval: YYYY-MM-DD (daily datasets) or YYYY-MM-DDTHH (hourly), checked on creation
    lake_url: str = ""
    interval_start: datetime | None = None
    interval_end: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history_url: str = ""  # SQLAlchemy URL of the run-history DB
    cluster: dict[str, Any] = field(default_factory=lambda: {"backend": "local"})
    keyring_path: str = ""
    artifacts_url: str = ""  # fsspec URL of the model artifact store
    artifacts_options: dict[str, Any] | None = None  # fsspec storage options of the artifact store
    run_id: str = "manual"
    spec_obj: DatasetSpec | None = None
    upstream: dict[str, Any] = field(default_factory=dict)  # small JSON results of earlier steps
    env: Settings | None = None

    def __post_init__(self) -> None:
        env = self.env = self.env or Settings.from_env()
        self.lake_url = self.lake_url or env.lake_url
        self.history_url = self.history_url or env.history_url
        self.keyring_path = self.keyring_path or env.keyring_path
        self.artifacts_url = self.artifacts_url or env.artifacts_url
        if self.artifacts_options is None:
            self.artifacts_options = dict(env.artifacts_options)
        start, length = parse_interval(self.ds)  # a real ISO date or hour, else a UsageError naming `ds`
        if self.interval_start is None:
            self.interval_start = start
        if self.interval_end is None:
            self.interval_end = self.interval_start + length

    def check_interval(self, argument: str = "ds") -> None:
        """`ds` in the dataset's interval grammar (an ISO date for daily datasets, an ISO hour for hourly).

        Raises:
            UsageError: naming `argument` (the CLI's ``--ds``).
        """
        parse_interval(self.ds, self.spec.interval_unit, argument)

    @property
    def spec(self) -> DatasetSpec:
        if self.spec_obj is None:
            self.spec_obj = spec_for(self.dataset, self.env.specs_dir)
        return self.spec_obj

    @cached_property
    def settings(self) -> dict[str, Any]:
        """Every setting's resolved value for this run (overrides over spec defaults over declared defaults)."""
        return settings_decl.resolve(self.params, self.spec)

    def param(self, name: str) -> Any:
        """The typed value of setting `name` (declared in :mod:`tasks.params`); unknown names are an error."""
        settings_decl.get(name)
        return self.settings[name]

    def cache_params(self, module: str) -> dict[str, Any]:
        """The settings part of the cache key of the step implemented in `module`."""
        return settings_decl.cache_params(module, self.settings)

    @cached_property
    def keys(self) -> keyring.Keyring:
        """The keyring file at `keyring_path` (never created here: ``python -m tasks keys init``),
        with the KMS of ``LEPTONFLOW_KMS`` when that is set."""
        ring = keyring.load(self.keyring_path)
        if self.env.kms:
            ring.kms = dict(self.env.kms)
        return ring

    @cached_property
    def lake(self) -> Lake:
        """The lake, signing (Ed25519) every manifest it commits and verifying every one it reads."""
        return Lake(self.lake_url, signer=signing.signer_for(self.keys), verifier=signing.verifier_for(self.keys),
                    gc_grace_s=self.env.gc_grace_s)

    def plan(self, stage: str) -> dict[str, Any] | None:
        """The cluster plan the forecast sensor made for `stage` ("clean", "train"), if any."""
        return self.upstream.get(f"plan_{stage}")

    def crypto(self) -> Any:
        """The Parquet encryption to apply to lake writes (None when the `encrypt` setting is off)."""
        if not self.param("encrypt"):
            return None
        from tasks.security import crypto  # lazy: only steps that write data need it

        return crypto.for_context(self)
