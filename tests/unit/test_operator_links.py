"""Extra links of the step operators: the Dask dashboard when the cluster outlives the step (from the
step result, as execute() keeps it or as XCom returns it) and the interval's report, a route of the plugin."""

from __future__ import annotations

import pytest
from leptonflow_airflow.operators import REPORT_PREFIX, DaskDashboardLink, RunReportLink, ValidateOperator
from starlette.routing import Match

from tasks.resources.cluster import reachable_dashboard

URL = "http://10.0.0.5:8787/status"


def test_dashboard_only_for_a_standing_cluster():
    size = {"workers": 2, "dashboard": URL}
    assert reachable_dashboard({"backend": "local"}, size) == {}  # its LocalCluster dies with the task
    assert reachable_dashboard(None, size) == {}
    assert reachable_dashboard({"backend": "address", "address": "tcp://10.0.0.5:8786"}, size) == {"dashboard": URL}
    assert reachable_dashboard({"backend": "address", "address": "tcp://10.0.0.5:8786"}, {"dashboard": None}) == {}
    assert reachable_dashboard({"backend": "nope"}, size) == {}


def _op() -> ValidateOperator:
    return ValidateOperator(task_id="validate_clean", step="validate_clean", dataset="events")


def test_dashboard_link_reads_the_result_kept_by_execute():
    op = _op()
    op._lf_result = {"ds": "2026-11-03", "dashboard": URL}
    assert DaskDashboardLink().get_link(op, ti_key=None) == URL
    op._lf_result = {"ds": "2026-11-03"}  # local backend: no link rather than a dead one
    assert DaskDashboardLink().get_link(op, ti_key=None) == ""


def test_dashboard_link_reads_the_xcom(monkeypatch):
    from airflow.sdk.execution_time import xcom

    seen = []

    def get_value(*, ti_key, key):
        seen.append((ti_key, key))
        return {"ds": "2026-11-03", "dashboard": URL}

    monkeypatch.setattr(xcom.XCom, "get_value", staticmethod(get_value))
    assert DaskDashboardLink().get_link(_op(), ti_key="ti-key") == URL
    assert seen == [("ti-key", "return_value")]


@pytest.mark.parametrize("result", [{"ds": "2026-11-03"}, {}])
def test_report_link_resolves_to_a_route_of_the_plugin(result):
    import leptonflow_plugin

    op = _op()
    op._lf_result = result
    link = RunReportLink().get_link(op, ti_key=None)
    assert link.startswith(REPORT_PREFIX + "/")
    assert {"app": leptonflow_plugin.app, "url_prefix": REPORT_PREFIX, "name": "leptonflow report"} in \
        leptonflow_plugin.LeptonflowPlugin.fastapi_apps
    path = link[len(REPORT_PREFIX):]
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    matched = [r.path for r in leptonflow_plugin.app.routes if r.matches(scope)[0] is Match.FULL]
    assert matched == (["/report/{dataset}/{ds}"] if result else ["/"])
