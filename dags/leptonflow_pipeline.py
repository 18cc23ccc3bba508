"""The leptonflow pipeline: one DAG per dataset spec in dags/datasets/ (wiring only).

validate_raw -> plan_clean -> clean -> split -> validate_clean -> secure
  -> plan_train -> train -> evaluate -> compress -> publish (emits an Asset event)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Asset, Param
from airflow.timetables.interval import CronDataIntervalTimetable
from leptonflow_airflow.operators import LeptonflowStepOperator, PublishOperator, ValidateOperator
from leptonflow_airflow.sensors import ResourceForecastSensor
from leptonflow_airflow.torch_train import TorchTrainOperator

from tasks import params
from tasks.context import Settings
from tasks.spec import DatasetSpec, scan_specs

CRON = {"@daily": "0 0 * * *", "@hourly": "0 * * * *", "@weekly": "0 0 * * 0"}


def pipeline_params(spec: DatasetSpec) -> dict[str, Param]:
    """The trigger form: one typed, bounded, documented Param per setting of tasks.params, grouped by section."""
    return {name: Param(**kwargs) for name, kwargs in params.airflow_param_kwargs(spec).items()}


def build_dag(spec: DatasetSpec) -> DAG:
    schedule = CronDataIntervalTimetable(CRON.get(spec.schedule, spec.schedule), timezone="UTC")
    model_asset = Asset(name=f"leptonflow_model_{spec.name}", uri=f"leptonflow://models/{spec.name}")
    with DAG(
        dag_id=f"leptonflow_{spec.name}",
        description=spec.description or f"leptonflow pipeline for {spec.name}",
        schedule=schedule,
        start_date=datetime.fromisoformat(spec.start_date).replace(tzinfo=UTC),
        catchup=False,
        max_active_runs=2,
        params=pipeline_params(spec),
        tags=["leptonflow", spec.name],
        default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
        doc_md=__doc__,
    ) as dag:
        kw = {"dataset": spec.name}
        validate_raw = ValidateOperator(task_id="validate_raw", step="validate_raw", **kw)
        plan_clean = ResourceForecastSensor(task_id="plan_clean", stage="clean", **kw)
        clean = LeptonflowStepOperator(task_id="clean", step="clean", **kw)
        split = LeptonflowStepOperator(task_id="split", step="split", **kw)
        validate_clean = ValidateOperator(task_id="validate_clean", step="validate_clean", **kw)
        secure = LeptonflowStepOperator(task_id="secure", step="secure", **kw)
        plan_train = ResourceForecastSensor(task_id="plan_train", stage="train", **kw)
        train = TorchTrainOperator(task_id="train", **kw)
        evaluate = LeptonflowStepOperator(task_id="evaluate", step="evaluate", **kw)
        compress = LeptonflowStepOperator(task_id="compress", step="compress", **kw)
        publish = PublishOperator(task_id="publish", step="publish", outlets=[model_asset], **kw)
        (validate_raw >> plan_clean >> clean >> split >> validate_clean >> secure
         >> plan_train >> train >> evaluate >> compress >> publish)
    return dag


# Good specs only. A spec that fails its schema check gets no DAG and hides no other dataset's DAG:
# dags/leptonflow_spec_errors.py reports it as that file's import error, naming the spec file and field.
for _spec in scan_specs(Settings.from_env().specs_dir).specs:
    globals()[f"leptonflow_{_spec.name}"] = build_dag(_spec)
