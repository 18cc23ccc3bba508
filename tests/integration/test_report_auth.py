"""The report pages behind Airflow's auth, against a real api-server (SimpleAuthManager, JWTs from
``/auth/token``, the plugin loaded as in production): every route refuses anonymous callers, the auth
manager decides per DAG, the file endpoints serve committed Data Docs only, bad URL parts are 4xx."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pyarrow as pa
import pytest
from leptonflow_airflow.stack import AirflowStack

from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.io.parquet import write_table
from tests.integration.report_auth_manager import ALLOWED_DAG, RESTRICTED_USER
from tests.keys import keyring_at
from tests.lake_files import committed_file

DS = "2026-11-05"
HOSTILE = "<img src=x onerror=alert(document.domain)>"
AUTH_MANAGER = "tests.integration.report_auth_manager.OneDagForAliceAuthManager"


def _commit_clean(ctx: StepContext) -> Manifest:
    version, vdir = ctx.lake.new_version("clean", ctx.dataset, ctx.ds)
    entry = write_table(f"{vdir}/p.parquet", pa.table({"x": [1, 2, 3]}), f"v={version}/p.parquet")
    return ctx.lake.commit(Manifest("clean", ctx.dataset, ctx.ds, version, [entry], extra={}))


def _data_docs(ctx: StepContext) -> None:
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from tasks.validation import datadocs

    cfg = ExpectationConfiguration(type="expect_column_values_to_not_be_null", kwargs={"column": "user_id"})
    res = ExpectationValidationResult(success=False, expectation_config=cfg, result={
        "element_count": 3, "unexpected_count": 1, "partial_unexpected_list": ["secret-user-1"]})
    stats = {"evaluated_expectations": 1, "successful_expectations": 0, "unsuccessful_expectations": 1,
             "success_percent": 0.0}
    result = ExpectationSuiteValidationResult(success=False, results=[res], suite_name="events.raw", statistics=stats)
    datadocs.publish(ctx.lake, ctx.dataset, ctx.ds, "raw", result, {"suite": "events.raw"}, "fp", {},
                     gx_page=False, pii_columns=ctx.spec.pii_columns)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("report-auth")
    s = AirflowStack(home=base / "airflow", lf_home=base / "lf", extra_env={
        "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{RESTRICTED_USER}:viewer",
    })
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s.env.items():
            if k.startswith("LEPTONFLOW_"):
                mp.setenv(k, v)
        keyring_at(s.env["LEPTONFLOW_KEYRING"])
        s.data = {}
        events = StepContext(dataset="events", ds=DS)
        s.data["clean"] = events.lake.abspath(m := _commit_clean(events), m.files[0])
        _data_docs(events)
        _commit_clean(StepContext(dataset="other", ds=DS))
        clean = Path(s.env["LEPTONFLOW_LAKE"]) / "clean"
        (clean / HOSTILE / f"ds={DS}").mkdir(parents=True)  # stray / hostile folders in the lake
        (clean / "events" / f"ds={HOSTILE}").mkdir(parents=True)
        s.init()
        try:
            s.start(services=("api-server",))
            yield s
        finally:
            s.stop()


def _client(stack: AirflowStack, user: str | None = None, **headers: str) -> httpx.Client:
    if user is not None:
        r = httpx.post(f"{stack.url}/auth/token", json={"username": user, "password": stack.password(user)})
        assert r.status_code == 201, r.text
        headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return httpx.Client(base_url=stack.url, headers=headers, follow_redirects=False, timeout=60)


def _docs_path(stack: AirflowStack) -> str:
    """The lake path of the committed raw Data Docs page (as the validation step reports it)."""
    return str(committed_file(stack.env["LEPTONFLOW_LAKE"], "validation", "events", DS, "raw/index.html"))


def _routes(stack: AirflowStack) -> list[str]:
    return ["/leptonflow/", f"/leptonflow/report/events/{DS}", f"/leptonflow/datadocs/events/{DS}/raw/index.html",
            f"/leptonflow/file?path={quote(_docs_path(stack))}", "/leptonflow/report/events/not-a-date",
            "/leptonflow/file"]


def test_anonymous_callers_are_refused_on_every_route(stack):
    keyring = Path(stack.env["LEPTONFLOW_KEYRING"]).read_bytes()
    with _client(stack) as anon, _client(stack, Authorization="Bearer not-a-jwt") as forged:
        for route in _routes(stack):
            for client in (anon, forged):
                r = client.get(route)
                assert r.status_code == 401, (route, r.status_code, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert b"rows in" not in r.content and b"secret-" not in r.content and keyring not in r.content
    # a browser is sent to the auth manager's login page, which brings it back afterwards
    with _client(stack, Accept="text/html,application/xhtml+xml") as browser:
        r = browser.get(f"/leptonflow/report/events/{DS}")
        assert r.status_code == 307 and r.headers["location"].startswith("/auth/login?next=")
        assert quote(f"/leptonflow/report/events/{DS}", safe="") in r.headers["location"]
    # the app's own API docs are not published either
    with _client(stack, "admin") as admin:
        for route in ("/leptonflow/docs", "/leptonflow/openapi.json", "/leptonflow/redoc"):
            assert admin.get(route).status_code == 404


def test_the_auth_manager_decides_per_dag(stack):
    with _client(stack, "admin") as admin:
        index = admin.get("/leptonflow/")
        assert index.status_code == 200
        assert f"report/events/{DS}" in index.text and f"report/other/{DS}" in index.text
        assert "script-src" not in index.headers["content-security-policy"]  # no script allowed at all
        assert "default-src 'none'" in index.headers["content-security-policy"]
        page = admin.get(f"/leptonflow/report/events/{DS}")
        assert page.status_code == 200 and "<h2 id='stage-clean'>clean</h2>" in page.text
        assert "secret-" not in page.text and page.headers["cache-control"] == "no-store"
    with _client(stack, RESTRICTED_USER) as alice:
        index = alice.get("/leptonflow/")
        assert index.status_code == 200
        assert f"report/other/{DS}" in index.text and "report/events" not in index.text
        assert alice.get(f"/leptonflow/report/other/{DS}").status_code == 200
        for route in (f"/leptonflow/report/events/{DS}", _routes(stack)[2], _routes(stack)[3]):
            r = alice.get(route)
            assert r.status_code == 403 and ALLOWED_DAG not in r.text and "secret-" not in r.text, route


def test_data_docs_are_served_from_the_report_link_and_nothing_else(stack):
    lake = stack.env["LEPTONFLOW_LAKE"]
    keyring_path = stack.env["LEPTONFLOW_KEYRING"]
    keyring = Path(keyring_path).read_bytes()
    with _client(stack, "admin") as admin:
        page = admin.get(f"/leptonflow/report/events/{DS}").text
        href = page.split("href='", 1)[1].split("'", 1)[0]
        assert href == f"../../datadocs/events/{DS}/raw/index.html"
        docs = admin.get(urljoin(f"{stack.url}/leptonflow/report/events/{DS}", href))  # as a browser does
        assert docs.status_code == 200 and "expect_column_values_to_not_be_null" in docs.text
        assert "[masked: pii]" in docs.text and "secret-user-1" not in docs.text
        assert docs.headers["content-security-policy"].startswith("sandbox;")
        result = admin.get(urljoin(str(docs.url), "result.json"))  # the page's own relative link
        assert result.status_code == 200 and "secret-" not in result.text and json.loads(result.text)["results"]
        # the operators' Data Docs link (a lake path) is redirected to the same page
        docs_path = _docs_path(stack)
        rel = docs_path.split(f"/ds={DS}/", 1)[1]
        r = admin.get(f"/leptonflow/file?path={quote(docs_path)}")
        assert r.status_code == 307 and r.headers["location"] == f"datadocs/events/{DS}/{quote(rel)}"
        assert admin.get(urljoin(str(r.url), r.headers["location"])).content == docs.content
        crafted = [
            f"/leptonflow/file?path={quote(keyring_path)}",
            f"/leptonflow/file?path={quote(stack.data['clean'])}",  # a data file
            "/leptonflow/file?path=/etc/passwd",
            f"/leptonflow/file?path={quote(f'{lake}/validation/events/ds={DS}/../../../../keys/keyring.json')}",
            f"/leptonflow/file?path={quote(f'{lake}/validation/events/ds={DS}/raw/../../../../../etc/passwd')}",
            f"/leptonflow/datadocs/events/{DS}/..%2F..%2F..%2F..%2Fkeys%2Fkeyring.json",
            f"/leptonflow/datadocs/events/{DS}/%2Fetc%2Fpasswd",
            f"/leptonflow/datadocs/events/{DS}/_manifest.json",
            f"/leptonflow/datadocs/events/{DS}/{quote(Path(stack.data['clean']).name)}",
            "/leptonflow/datadocs/events/..%2F..%2Fkeys/raw/index.html",
        ]
        for route in crafted:
            r = admin.get(route)
            assert r.status_code in (400, 404), (route, r.status_code, r.text)
            assert keyring not in r.content and b"root:" not in r.content and b"PAR1" not in r.content


def test_bad_url_parts_are_4xx_and_hostile_names_never_render(stack):
    with _client(stack, "admin") as admin:
        statuses = {route: admin.get(route).status_code for route in (
            "/leptonflow/report/events/2026-13-45", "/leptonflow/report/events/yesterday",
            f"/leptonflow/report/events/{quote(HOSTILE, safe='')}",
            f"/leptonflow/report/{quote(HOSTILE, safe='')}/{DS}", f"/leptonflow/report/ghost/{DS}",
            f"/leptonflow/report/Events/{DS}", "/leptonflow/datadocs/events/2026-02-30/raw/index.html",
            "/leptonflow/file?path=", "/leptonflow/nope")}
        assert all(400 <= s < 500 for s in statuses.values()), statuses
        index = admin.get("/leptonflow/").text
        assert "<img" not in index and "onerror" not in index
