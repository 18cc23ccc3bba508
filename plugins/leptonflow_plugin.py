"""The leptonflow AirflowPlugin: the report pages (a FastAPI app in the api-server), their
entry in the UI's navigation, and the operators' extra links.

Airflow does not authenticate plugin FastAPI apps (a mounted app inherits none of the core API's
dependencies), so this app does it on every route, with Airflow's own machinery:

- who: ``airflow.api_fastapi.core_api.security.get_user``, the dependency of the core API: an
  ``Authorization: Bearer`` JWT, else the UI's ``_token`` cookie, validated by the auth manager.
  No valid token: 401, or a redirect to the auth manager's login page for a browser asking for HTML.
- what: the auth manager decides (``get_auth_manager().is_authorized_dag``, method GET on the runs
  of the DAG whose data the page shows, ``leptonflow_<dataset>``, with its team as the core API's
  ``requires_access_dag`` passes it). Not allowed: 403. The index lists only readable datasets.

Data Docs files are served only when the interval's signed ``validation`` manifest lists them (see
``tasks.publishing.report.docs_file``), in a CSP sandbox; bad URL parts are 400/404, never 500.
The pages find the lake, history DB and artifact store as the steps do: the leptonflow
Connections through ``leptonflow_airflow.hooks``, else the ``tasks.context.Settings`` defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from leptonflow_airflow.hooks import StoreConnections
from leptonflow_airflow.operators import DaskDashboardLink, DataDocsLink, RunReportLink

from tasks.errors import IntegrityError
from tasks.publishing import report

# Report pages: inline styles and data: pictures only; no script, no framing by other origins.
PAGE_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'; "
            "base-uri 'none'; form-action 'none'")
# Data Docs (ours and GX's, which loads its styles from CDNs): a sandbox (an opaque origin, no
# script), so even a hostile page in the lake cannot act in the visitor's Airflow session.
DOCS_CSP = ("sandbox; default-src 'none'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline' https:; "
            "font-src data: https:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'")


class LoginRequired(Exception):
    """An unauthenticated browser request: answered with a redirect to `url`, the login page."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


async def current_user(request: Request) -> Any:
    """The Airflow user of this request, as the core API resolves it (bearer token, else the UI's cookie).

    Airflow's security module is imported here, not at module level: every Airflow process imports
    this plugin, only the api-server answers requests.

    Raises:
        LoginRequired: no valid token, and the client is a browser asking for a page.
        HTTPException: 401 when there is no valid token.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    try:
        return await get_user(request, _oauth_token=None, bearer_credentials=await bearer_scheme(request))
    except HTTPException as exc:  # no token 401, expired 401, invalid 403: all mean "not logged in"
        if _wants_html(request):
            raise LoginRequired(get_auth_manager().get_url_login(next_url=str(request.url))) from None
        raise HTTPException(401, f"not authenticated ({exc.detail}): log in to Airflow or send "
                                 "an Authorization: Bearer token", headers={"WWW-Authenticate": "Bearer"}) from None


def dag_id_of(dataset: str) -> str:
    """The DAG that writes `dataset` (dags/leptonflow_pipeline.py): its permissions guard the dataset's pages."""
    return f"leptonflow_{dataset}"


def may_read(user: Any, dataset: str) -> bool:
    """Whether the auth manager lets `user` read the runs of `dataset`'s DAG (blocking: the DAG's team
    comes from the metadata DB, as in the core API's ``requires_access_dag``)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    dag_id = dag_id_of(dataset)
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user
    )


async def authorize(user: Any, dataset: str) -> None:
    """Raises HTTPException 403 unless `user` may read `dataset`'s DAG."""
    if not await asyncio.to_thread(may_read, user, dataset):
        raise HTTPException(403, f"forbidden: no read access to the runs of DAG {dag_id_of(dataset)}")


# Every route needs an authenticated user (the dependency runs once per request: routes that
# authorize declare it again and get the same user).
app = FastAPI(title="leptonflow report", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(current_user)])


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired) -> Response:
    return RedirectResponse(exc.url, status_code=307)


@app.exception_handler(report.ReportRequestError)
async def _bad_url_part(request: Request, exc: report.ReportRequestError) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=400 if isinstance(exc, report.MalformedRequest) else 404)


@app.exception_handler(IntegrityError)
async def _tampered(request: Request, exc: IntegrityError) -> Response:
    return JSONResponse({"detail": f"not served: {exc}"}, status_code=409)


@app.middleware("http")
async def _security_headers(request: Request, call_next: Callable) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"  # pages of a logged-in user: no shared caches
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def store_fields() -> dict[str, Any]:
    """StepContext keyword arguments for the stores, resolved as the steps resolve them (blocking)."""
    return StoreConnections.resolve().step_fields()


def lake_url() -> str:
    """The lake root URL the steps write to (blocking: it may read a Connection)."""
    return str(store_fields()["lake_url"])


def _q(part: str) -> str:
    return quote(part, safe="")


async def index(readable: Callable[[str], bool] | None = None) -> str:
    """The index page: every committed interval of the datasets `readable` accepts (blocking check;
    None: all), newest first."""
    url = await asyncio.to_thread(lake_url)
    pairs = await asyncio.to_thread(report.committed_intervals, url)
    if readable is not None:
        datasets = {d for d, _ in pairs}
        allowed = await asyncio.to_thread(lambda: {d for d in datasets if readable(d)})
        pairs = [p for p in pairs if p[0] in allowed]
    return report.index_page(pairs)


async def run_report(dataset: str, ds: str) -> str:
    """The report page of one interval (URL parts checked by ``report.collect``)."""
    fields = await asyncio.to_thread(store_fields)
    facts = await asyncio.to_thread(report.collect, dataset, ds, **fields)
    if not facts["stages"] and not facts["raw_files"]:
        raise HTTPException(404, f"nothing in the lake for dataset {dataset!r} interval {ds}")
    # links are relative to this page: /leptonflow/report/<dataset>/<ds> -> /leptonflow/datadocs/...
    return report.html_page(
        facts, docs_href=lambda stage, path: f"../../datadocs/{_q(dataset)}/{_q(ds)}/{quote(path)}"
    )


@app.get("/", response_class=HTMLResponse)
async def index_route(user: Any = Depends(current_user)) -> str:
    return await index(readable=lambda dataset: may_read(user, dataset))


@app.get("/report/{dataset}/{ds}", response_class=HTMLResponse)
async def report_route(dataset: str, ds: str, user: Any = Depends(current_user)) -> str:
    report.check_request(dataset, ds)
    await authorize(user, dataset)
    return await run_report(dataset, ds)


@app.get("/datadocs/{dataset}/{ds}/{path:path}")
async def datadocs_route(dataset: str, ds: str, path: str, user: Any = Depends(current_user)) -> Response:
    """A Data Docs file of one interval: only files its signed validation manifest lists."""
    report.check_request(dataset, ds)
    await authorize(user, dataset)
    fields = await asyncio.to_thread(store_fields)
    data, media_type = await asyncio.to_thread(report.docs_file, dataset, ds, path, **fields)
    return Response(content=data, media_type=media_type, headers={"Content-Security-Policy": DOCS_CSP})


@app.get("/file")
async def file_route(path: str = "", user: Any = Depends(current_user)) -> Response:
    """A Data Docs file named by its lake path (the validation steps' ``data_docs`` result, the
    operators' Data Docs link): redirected to its /datadocs URL; any other path is refused."""
    url = await asyncio.to_thread(lake_url)
    dataset, ds, rel = report.docs_location(url, path)  # checks every part
    await authorize(user, dataset)
    return RedirectResponse(f"datadocs/{_q(dataset)}/{_q(ds)}/{quote(rel)}", status_code=307)


@app.get("/trends/{dataset}", response_class=HTMLResponse)
async def trends_route(dataset: str, n: int = 30, user: Any = Depends(current_user)) -> str:
    """The last `n` (1..1000) intervals of `dataset` (``tasks.publishing.trends``): plots and a table whose
    red cells are failed checks or crossed thresholds; each interval links to its report page."""
    from tasks.publishing import trends  # matplotlib and the lake readers: only when a page is asked for

    trends.check_dataset(dataset)
    await authorize(user, dataset)
    fields = await asyncio.to_thread(store_fields)
    facts = await asyncio.to_thread(trends.collect, dataset, n, **fields)

    def href(ds: str) -> str:  # relative to /leptonflow/trends/<dataset>
        return f"../report/{_q(dataset)}/{_q(ds)}"

    return await asyncio.to_thread(trends.html_page, facts, href)


class LeptonflowPlugin(AirflowPlugin):
    name = "leptonflow"
    fastapi_apps = [{"app": app, "url_prefix": "/leptonflow", "name": "leptonflow report"}]
    external_views = [
        {"name": "leptonflow report", "href": "leptonflow/", "destination": "nav", "url_route": "leptonflow"}
    ]
    operator_extra_links = [DataDocsLink(), DaskDashboardLink(), RunReportLink()]
