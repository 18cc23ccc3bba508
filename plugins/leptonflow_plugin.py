"""The leptonflow AirflowPlugin: the report page (a FastAPI app in the api-server),
its entry in the UI's navigation, and the operators' extra links."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from leptonflow_airflow.operators import DaskDashboardLink, DataDocsLink, RunReportLink

from tasks.context import default_home
from tasks.publishing import report

app = FastAPI(title="leptonflow report")


def _lake_root() -> Path:
    return Path(os.environ.get("LEPTONFLOW_LAKE", str(default_home() / "lake"))).resolve()


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """Every dataset and committed interval in the lake, newest first."""
    root = _lake_root()
    rows = []
    for ds_dir in sorted((root / "clean").glob("*/ds=*"), reverse=True) if (root / "clean").exists() else []:
        dataset, ds = ds_dir.parent.name, ds_dir.name[3:]
        rows.append(f"<li><a href='report/{quote(dataset)}/{quote(ds)}'>{dataset} — {ds}</a></li>")
    body = "".join(rows) or "<li>no committed intervals yet: trigger a leptonflow DAG</li>"
    return f"<!doctype html><html><body><h1>leptonflow runs</h1><ul>{body}</ul></body></html>"


@app.get("/report/{dataset}/{ds}", response_class=HTMLResponse)
async def run_report(dataset: str, ds: str) -> str:
    facts = await asyncio.to_thread(report.collect, dataset, ds)
    if not facts["stages"] and not facts["raw_files"]:
        raise HTTPException(404, f"nothing in the lake for dataset {dataset!r} interval {ds}")
    # links are relative to this page: /leptonflow/report/<dataset>/<ds> -> /leptonflow/file
    return report.html_page(facts, docs_href=lambda p: f"../../file?path={quote(p)}")


@app.get("/file")
async def lake_file(path: str) -> FileResponse:
    """A file from the lake (Data Docs HTML, plots); only paths inside the lake are served."""
    root = _lake_root()
    target = Path(path).resolve()
    if root not in target.parents or not target.is_file():
        raise HTTPException(404, "no such file in the lake")
    return FileResponse(target)


class LeptonflowPlugin(AirflowPlugin):
    name = "leptonflow"
    fastapi_apps = [{"app": app, "url_prefix": "/leptonflow", "name": "leptonflow report"}]
    external_views = [
        {"name": "leptonflow report", "href": "leptonflow/", "destination": "nav", "url_route": "leptonflow"}
    ]
    operator_extra_links = [DataDocsLink(), DaskDashboardLink(), RunReportLink()]
