"""Thin Airflow operators over `tasks.steps`: read the context, run the step, push small JSON."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperator, BaseOperatorLink

from leptonflow_airflow.context import context_from_airflow
from tasks.steps import run_step

log = logging.getLogger(__name__)

REPORT_PREFIX = "/leptonflow"  # where plugins/leptonflow_plugin.py mounts the report app


def _result_of(operator: BaseOperator, ti_key: Any) -> dict[str, Any]:
    """The step result: kept on the operator by execute() (links are computed right after it)."""
    result = getattr(operator, "_lf_result", None)
    if result is None:
        try:
            from airflow.sdk.execution_time.xcom import XCom

            result = XCom.get_value(ti_key=ti_key, key="return_value")
        except Exception:
            result = None
    return result if isinstance(result, dict) else {}


class DataDocsLink(BaseOperatorLink):
    """Great Expectations Data Docs of this validation run, served by the report plugin."""

    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        path = _result_of(operator, ti_key).get("data_docs")
        return f"{REPORT_PREFIX}/file?path={quote(str(path))}" if path else ""


class DaskDashboardLink(BaseOperatorLink):
    """The Dask dashboard of the cluster the step ran on (when it is reachable)."""

    name = "Dask dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return str(_result_of(operator, ti_key).get("dashboard") or "")


class RunReportLink(BaseOperatorLink):
    """The leptonflow report page of this dataset and interval."""

    name = "leptonflow report"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        res = _result_of(operator, ti_key)
        ds = res.get("ds")
        dataset = getattr(operator, "dataset", "")
        return f"{REPORT_PREFIX}/report/{dataset}/{ds}" if ds else f"{REPORT_PREFIX}/"


class OpenLineageMixin:
    """The OpenLineage provider's extraction hooks, answered by ``leptonflow_airflow.lineage``.

    The provider's listener calls them in the task's process (the operator that ran `execute`, so
    ``_lf_ctx`` and ``_lf_result`` are set); without a configured transport the provider is off and
    never calls them. `step` and `dataset` name what the task runs.
    """

    step: str
    dataset: str
    _lf_ctx: Any = None  # the StepContext execute() built
    _lf_result: Any = None  # the step's result

    def get_openlineage_facets_on_start(self) -> Any:
        from leptonflow_airflow import lineage

        return lineage.on_start(self.step, self.dataset)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from leptonflow_airflow import lineage

        return lineage.for_step(self.step, self.dataset, self._lf_ctx, self._lf_result)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        from leptonflow_airflow import lineage

        start = getattr(task_instance, "start_date", None)
        return lineage.for_step(self.step, self.dataset, self._lf_ctx, None, failed=True,
                                since=start.timestamp() if start is not None else None)


class LeptonflowStepOperator(OpenLineageMixin, BaseOperator):
    """Runs one pipeline step (`tasks.steps.STEPS`) for the run's data interval."""

    operator_extra_links = (RunReportLink(), DaskDashboardLink())
    ui_color = "#dbeafe"

    def __init__(self, *, step: str, dataset: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.dataset = dataset

    def execute(self, context: Any) -> dict[str, Any]:
        ctx = self._lf_ctx = context_from_airflow(context, self.dataset, self.step)
        result = run_step(self.step, ctx)
        result.setdefault("ds", ctx.ds)
        self._lf_result = result
        self.log.info("%s result: %s", self.step, {k: v for k, v in result.items() if k != "files"})
        return result


class ValidateOperator(LeptonflowStepOperator):
    """Great Expectations validation over every row on the Dask cluster; links to its Data Docs."""

    operator_extra_links = (DataDocsLink(), RunReportLink(), DaskDashboardLink())
    ui_color = "#dcfce7"


class PublishOperator(LeptonflowStepOperator):
    """Publishes the signed model and emits an Airflow Asset event for downstream DAGs."""

    ui_color = "#fef3c7"

    def execute(self, context: Any) -> dict[str, Any]:
        result = super().execute(context)
        for asset in self.outlets or []:
            try:
                context["outlet_events"][asset].extra = {
                    k: result.get(k) for k in ("artifact_url", "version", "verified", "metrics") if k in result
                }
            except Exception:  # an outlet that is not an Asset: nothing to annotate
                log.debug("outlet %r takes no extra", asset)
        return result
