"""Hooks: the only readers of leptonflow's Airflow Connections; each turns a conn_id into a typed config.

============================  ==========================================================  ====================
conn_id (default)             what the Connection holds                                   config
============================  ==========================================================  ====================
``leptonflow_lake``           lake root URL: ``extra.url`` or the URI (``s3://bucket/x``)  :class:`LakeConfig`
``leptonflow_artifacts``      artifact store URL + ``extra.storage_options`` (fsspec)      :class:`ArtifactStoreConfig`
``leptonflow_history``        SQLAlchemy URL of the run-history DB: ``extra.url`` or URI   :class:`HistoryConfig`
``dask_default``              the cluster backend config as ``extra`` (``backend`` + keys) :class:`ClusterConfig`
``leptonflow_keys``           the keyring document as ``extra`` (keys, or a ``kms`` part)  :class:`KeyringConfig`
============================  ==========================================================  ====================

``config()`` (``aconfig()`` from async code such as a trigger) returns None when the Connection
does not exist, and the caller uses its default (``tasks.context.Settings``). A Connection that
exists but cannot be used (its extra is not JSON, it has no URL, it names an unknown backend...)
raises :class:`ConnectionConfigError` naming the conn_id and what is wrong, and so does an
``AIRFLOW_CONN_<ID>`` variable that Airflow could not parse: Airflow reports that as "not
defined", which must not silently become the default.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from tasks.context import Settings
from tasks.errors import LeptonflowError
from tasks.resources.cluster import BACKENDS, ClusterBackendError, backend_for

log = logging.getLogger(__name__)

GENERIC_TYPES = ("", "generic")  # conn_types whose URI form carries no URL scheme of its own


class ConnectionConfigError(LeptonflowError, ValueError):
    """An Airflow Connection exists but cannot be used; `conn_id` names it."""

    def __init__(self, conn_id: str, problem: str) -> None:
        self.conn_id = conn_id
        super().__init__(f"Airflow Connection {conn_id!r}: {problem}")


@dataclass(frozen=True)
class LakeConfig:
    """Where the lake is: an fsspec URL or a local path."""

    url: str


@dataclass(frozen=True)
class ArtifactStoreConfig:
    """Where published models go; `storage_options` (credentials, endpoint) is None when the extra has none."""

    url: str
    storage_options: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HistoryConfig:
    """The run-history database; the URL may hold a password, so it is left out of repr."""

    url: str = field(repr=False)


@dataclass(frozen=True)
class ClusterConfig:
    """A Dask cluster backend config (``tasks.resources.cluster``); `options` may hold secrets."""

    backend: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The plain config dict that ``tasks.resources.cluster.backend_for`` and ``StepContext.cluster`` take."""
        return {**self.options, "backend": self.backend}


@dataclass(frozen=True)
class KeyringConfig:
    """The keyring document (``tasks.security.keyring`` format); never logged, never in the environment."""

    document: dict[str, Any] = field(repr=False)

    def to_json(self) -> str:
        return json.dumps(self.document, sort_keys=True)

    def private_file(self) -> str:
        """The path of a 0600 copy of the document (what the step and its workers are given)."""
        from tasks.security.keyring import private_copy

        return str(private_copy(self.to_json()))


ConfigT = TypeVar("ConfigT")


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "<value>") if secret else text


def _unparseable_env_value(conn_id: str) -> str | None:
    """Why ``AIRFLOW_CONN_<ID>`` does not parse as a Connection, or None when it is unset or parses.

    Airflow's secrets lookup skips a backend whose value fails to parse and then reports the
    Connection as not defined; asking its environment backend again tells the two cases apart.
    """
    from airflow.sdk.definitions.connection import Connection
    from airflow.secrets.environment_variables import CONN_ENV_PREFIX, EnvironmentVariablesBackend

    value = (EnvironmentVariablesBackend().get_conn_value(conn_id) or "").strip()
    if not value:
        return None
    try:
        if value.startswith("{"):
            Connection.from_json(value, conn_id=conn_id)
        else:
            Connection.from_uri(value, conn_id=conn_id)
    except (ValueError, TypeError, AirflowException) as exc:
        reason = _redact(str(exc), value)
        return f"{CONN_ENV_PREFIX}{conn_id.upper()} is not a valid Connection ({type(exc).__name__}: {reason})"
    return None


def parse_extra(conn: Any) -> dict[str, Any]:
    """The Connection's extra as a dict ({} when empty); bad JSON is an error, not an empty dict."""
    raw = conn.extra
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        extra = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ConnectionConfigError(conn.conn_id, f"extra is not valid JSON ({exc.msg} at line {exc.lineno} "
                                                  f"column {exc.colno})") from None
    if not isinstance(extra, dict):
        raise ConnectionConfigError(conn.conn_id, f"extra must be a JSON object, got {type(extra).__name__}")
    return extra


def url_from_fields(conn: Any) -> str | None:
    """The URL a Connection's URI form spells (``s3://bucket/prefix``, ``sqlite:////tmp/x.sqlite``,
    ``postgresql+psycopg2://user:pw@host:5432/db``), without its query; None when it spells none."""
    scheme = (conn.conn_type or "").strip()
    if scheme in GENERIC_TYPES or not (conn.host or conn.schema):
        return None
    auth = ""
    if conn.login or conn.password:
        auth = quote(conn.login or "", safe="")
        auth += f":{quote(conn.password, safe='')}" if conn.password else ""
        auth += "@"
    netloc = f"{auth}{conn.host or ''}{f':{conn.port}' if conn.port else ''}"
    path = conn.schema or ""
    return f"{scheme}://{netloc}/{path}" if netloc else f"{scheme}:///{path}"


def required_url(conn: Any, extra: Mapping[str, Any], what: str, example: str = "s3://bucket/prefix") -> str:
    """``extra.url``, else the URL of the Connection's URI form; an error naming the conn_id when neither."""
    url = extra.get("url")
    if url is None:
        url = url_from_fields(conn)
    if not isinstance(url, str) or not url.strip():
        raise ConnectionConfigError(conn.conn_id, f"has no {what} URL: set extra {{\"url\": ...}} or give the "
                                                  f"Connection as a URI such as {example}")
    return url.strip()


class LeptonflowConnectionHook(BaseHook, ABC, Generic[ConfigT]):
    """Reads one Connection and turns it into a config object; subclasses say how in ``parse``.

    Args:
        conn_id: the Connection to read; default the subclass's ``default_conn_name``.
    """

    conn_name_attr = "conn_id"
    conn_type = "generic"
    default_conn_name: ClassVar[str] = ""
    hook_name: ClassVar[str] = ""

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name

    def get_conn(self) -> ConfigT | None:
        return self.config()

    def config(self) -> ConfigT | None:
        """The config, or None when the Connection is not defined.

        Raises:
            ConnectionConfigError: the Connection exists (or its variable is set) but cannot be used.
        """
        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            return self._absent()
        return self.parse(conn)

    async def aconfig(self) -> ConfigT | None:
        """``config()`` for async code (a trigger): reads the Connection without blocking the event loop."""
        try:
            conn = await self.aget_connection(self.conn_id)
        except AirflowNotFoundException:
            return self._absent()
        return self.parse(conn)

    def _absent(self) -> None:
        problem = _unparseable_env_value(self.conn_id)
        if problem:
            raise ConnectionConfigError(self.conn_id, problem)
        log.debug("Connection %s is not defined: using the default", self.conn_id)
        return None

    @abstractmethod
    def parse(self, conn: Any) -> ConfigT:
        """The config of the Airflow Connection `conn`; raises ConnectionConfigError when it cannot be used."""


class LakeHook(LeptonflowConnectionHook[LakeConfig]):
    """``leptonflow_lake``: the lake root."""

    default_conn_name = "leptonflow_lake"
    hook_name = "leptonflow lake"

    def parse(self, conn: Any) -> LakeConfig:
        return LakeConfig(url=required_url(conn, parse_extra(conn), "lake"))


class ArtifactStoreHook(LeptonflowConnectionHook[ArtifactStoreConfig]):
    """``leptonflow_artifacts``: the model artifact store and its fsspec storage options."""

    default_conn_name = "leptonflow_artifacts"
    hook_name = "leptonflow artifact store"

    def parse(self, conn: Any) -> ArtifactStoreConfig:
        extra = parse_extra(conn)
        options = extra.get("storage_options")
        if options is not None and not isinstance(options, dict):
            raise ConnectionConfigError(conn.conn_id, "extra.storage_options must be a JSON object")
        return ArtifactStoreConfig(url=required_url(conn, extra, "artifact store"), storage_options=options)


class HistoryHook(LeptonflowConnectionHook[HistoryConfig]):
    """``leptonflow_history``: the run-history database."""

    default_conn_name = "leptonflow_history"
    hook_name = "leptonflow run history"

    def parse(self, conn: Any) -> HistoryConfig:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        url = required_url(conn, parse_extra(conn), "SQLAlchemy", "postgresql+psycopg2://user:pw@host/db")
        try:
            make_url(url)
        except ArgumentError:
            raise ConnectionConfigError(conn.conn_id, "url is not a SQLAlchemy URL "
                                                      "(such as postgresql+psycopg2://user:pw@host/db)") from None
        return HistoryConfig(url=url)


class DaskClusterHook(LeptonflowConnectionHook[ClusterConfig]):
    """``dask_default``: the Dask cluster backend. The extra is the backend config; a gateway's
    password may instead be the Connection's password (and its username the login)."""

    default_conn_name = "dask_default"
    hook_name = "leptonflow Dask cluster"

    def parse(self, conn: Any) -> ClusterConfig:
        extra = parse_extra(conn)
        name = extra.get("backend")
        if not name:
            raise ConnectionConfigError(conn.conn_id, f"extra has no 'backend' (one of {', '.join(sorted(BACKENDS))})")
        secrets = BACKENDS[name].secret_keys if isinstance(name, str) and name in BACKENDS else frozenset()
        if conn.password and "password" in secrets:
            extra.setdefault("password", conn.password)
            if conn.login:
                extra.setdefault("username", conn.login)
        try:
            backend = backend_for(extra)
        except ClusterBackendError as exc:
            raise ConnectionConfigError(conn.conn_id, str(exc)) from None
        options = {k: v for k, v in backend.config.items() if k != "backend"}
        return ClusterConfig(backend=backend.name, options=options)


class KeyringHook(LeptonflowConnectionHook[KeyringConfig]):
    """``leptonflow_keys``: the keyring document (master keys and/or a ``kms`` part, Ed25519 signing keys),
    validated, never logged. With a ``kms`` part (``{"backend": "aws-kms", "key_id": ..., "region": ...}``)
    a real KMS wraps new files' keys and workers only ask it to unwrap."""

    default_conn_name = "leptonflow_keys"
    hook_name = "leptonflow keyring"

    def parse(self, conn: Any) -> KeyringConfig:
        from tasks.security.keyring import Keyring
        from tasks.security.kms import KmsConfig

        doc = parse_extra(conn)
        if "master_keys" not in doc:
            raise ConnectionConfigError(conn.conn_id, "extra is not a keyring document (no 'master_keys')")
        try:
            Keyring.from_doc(doc).signing_key()  # a step signs every manifest it commits: it needs one
            if doc.get("kms"):
                KmsConfig.from_dict(doc["kms"], "kms")
        except (LeptonflowError, LookupError, ValueError, TypeError) as exc:
            raise ConnectionConfigError(conn.conn_id, f"keyring document is malformed: {exc}") from None
        return KeyringConfig(document=doc)


def cluster_config(conn_id: str = DaskClusterHook.default_conn_name) -> dict[str, Any]:
    """The backend config dict of Connection `conn_id`; the local backend when it is not defined."""
    config = DaskClusterHook(conn_id).config()
    return config.to_dict() if config else {"backend": "local"}


@dataclass(frozen=True)
class StoreConnections:
    """What leptonflow's store Connections say (None where a Connection is not defined)."""

    lake: LakeConfig | None
    history: HistoryConfig | None
    artifacts: ArtifactStoreConfig | None
    keyring: KeyringConfig | None

    @classmethod
    def resolve(cls) -> StoreConnections:
        """Read every store Connection; a broken one raises ConnectionConfigError."""
        return cls(lake=LakeHook().config(), history=HistoryHook().config(), artifacts=ArtifactStoreHook().config(),
                   keyring=KeyringHook().config())

    def step_fields(self, env: Settings | None = None) -> dict[str, Any]:
        """``StepContext`` keyword arguments: the Connections' locations over the `env` defaults."""
        env = env or Settings.from_env()
        return {
            "keyring_path": self.keyring.private_file() if self.keyring else env.keyring_path,
            "lake_url": self.lake.url if self.lake else env.lake_url,
            "history_url": self.history.url if self.history else env.history_url,
            "artifacts_url": self.artifacts.url if self.artifacts else env.artifacts_url,
            "artifacts_options": (self.artifacts.storage_options if self.artifacts else None),
            "env": env,
        }
