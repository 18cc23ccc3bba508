"""The leptonflow AirflowPlugin: the report page (a FastAPI app in the api-server),
its entry in the UI's navigation, and the operators' extra links.

The page finds the lake, history DB and artifact store as the steps do: the leptonflow
Connections through ``leptonflow_airflow.hooks``, else the ``tasks.context.Settings`` defaults.
"""

from __future__ import annotations

import asyncio
import mimetypes
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from leptonflow_airflow.hooks import StoreConnections
from leptonflow_airflow.operators import DaskDashboardLink, DataDocsLink, RunReportLink

from tasks.io.lake import is_local
from tasks.publishing import report

app = FastAPI(title="leptonflow report")


def store_fields() -> dict[str, Any]:
    """StepContext keyword arguments for the stores, resolved as the steps resolve them (blocking)."""
    return StoreConnections.resolve().step_fields()


def lake_url() -> str:
    """The lake root URL the steps write to (blocking: it may read a Connection)."""
    return str(store_fields()["lake_url"])


def _committed_intervals(url: str) -> list[tuple[str, str]]:
    """(dataset, ds) of every interval with a clean-stage folder, newest first."""
    fs, root = fsspec.core.url_to_fs(url)
    found = fs.glob(f"{root.rstrip('/')}/clean/*/ds=*")
    pairs = [(posixpath.basename(posixpath.dirname(p)), posixpath.basename(p)[3:]) for p in found]
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]), reverse=True)


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """Every dataset and committed interval in the lake, newest first."""
    url = await asyncio.to_thread(lake_url)
    rows = []
    for dataset, ds in await asyncio.to_thread(_committed_intervals, url):
        rows.append(f"<li><a href='report/{quote(dataset)}/{quote(ds)}'>{dataset} — {ds}</a></li>")
    body = "".join(rows) or "<li>no committed intervals yet: trigger a leptonflow DAG</li>"
    return f"<!doctype html><html><body><h1>leptonflow runs</h1><ul>{body}</ul></body></html>"


@app.get("/report/{dataset}/{ds}", response_class=HTMLResponse)
async def run_report(dataset: str, ds: str) -> str:
    fields = await asyncio.to_thread(store_fields)
    facts = await asyncio.to_thread(report.collect, dataset, ds, **fields)
    if not facts["stages"] and not facts["raw_files"]:
        raise HTTPException(404, f"nothing in the lake for dataset {dataset!r} interval {ds}")
    # links are relative to this page: /leptonflow/report/<dataset>/<ds> -> /leptonflow/file
    return report.html_page(facts, docs_href=lambda p: f"../../file?path={quote(p)}")


def _remote_file(url: str, path: str) -> tuple[bytes, str] | None:
    """The bytes and media type of `path` when it lies inside the (non-local) lake at `url`."""
    fs, root = fsspec.core.url_to_fs(url)
    inner = fs._strip_protocol(path)
    root = root.rstrip("/")
    if ".." in inner.split("/") or not inner.startswith(root + "/") or not fs.isfile(inner):
        return None
    return fs.cat_file(inner), mimetypes.guess_type(inner)[0] or "application/octet-stream"


@app.get("/file")
async def lake_file(path: str) -> Response:
    """A file from the lake (Data Docs HTML, plots); only paths inside the lake are served."""
    url = await asyncio.to_thread(lake_url)
    fs, root = fsspec.core.url_to_fs(url)
    if is_local(fs):
        target = Path(path).resolve()
        if Path(root).resolve() not in target.parents or not target.is_file():
            raise HTTPException(404, "no such file in the lake")
        return FileResponse(target)
    found = await asyncio.to_thread(_remote_file, url, path)
    if found is None:
        raise HTTPException(404, "no such file in the lake")
    return Response(content=found[0], media_type=found[1])


class LeptonflowPlugin(AirflowPlugin):
    name = "leptonflow"
    fastapi_apps = [{"app": app, "url_prefix": "/leptonflow", "name": "leptonflow report"}]
    external_views = [
        {"name": "leptonflow report", "href": "leptonflow/", "destination": "nav", "url_route": "leptonflow"}
    ]
    operator_extra_links = [DataDocsLink(), DaskDashboardLink(), RunReportLink()]
