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

from tasks.spec import DatasetSpec, all_specs

CRON = {"@daily": "0 0 * * *", "@hourly": "0 * * * *", "@weekly": "0 0 * * 0"}


def pipeline_params(spec: DatasetSpec) -> dict[str, Param]:
    """Typed, documented, grouped Params: the trigger form."""
    return {
        "interval_date": Param(
            None, type=["null", "string"], format="date", section="Data",
            description="Process this day (YYYY-MM-DD) instead of the run's data interval.",
        ),
        "validation_policy": Param(
            "fail", type="string", enum=["fail", "warn", "quarantine"], section="Validation",
            description="On failed expectations: fail the run, warn and go on, or quarantine the offending rows.",
        ),
        "encrypt": Param(
            True, type="boolean", section="Security",
            description="Parquet Modular Encryption of clean, quarantine and split files (PII under its own key).",
        ),
        "anomaly_check": Param(
            True, type="boolean", section="Security",
            description="Score clean rows with an IsolationForest fitted on earlier intervals; quarantine outliers.",
        ),
        "anomaly_policy": Param(
            "warn", type="string", enum=["fail", "warn"], section="Security",
            description="When the interval's anomaly rate exceeds anomaly_max_rate.",
        ),
        "anomaly_max_rate": Param(
            float(spec.anomaly.get("max_rate", 0.05)), type="number", minimum=0, maximum=1, section="Security",
            description="Highest tolerated share of rows scored anomalous by the IsolationForest.",
        ),
        "deadline_s": Param(
            600, type="integer", minimum=10, maximum=86400, section="Resources",
            description="Deadline per heavy step (seconds): the forecast picks the smallest cluster meeting it.",
        ),
        "min_workers": Param(1, type="integer", minimum=1, maximum=1000, section="Resources",
                             description="Fewest Dask workers a plan may ask for."),
        "max_workers": Param(2, type="integer", minimum=1, maximum=1000, section="Resources",
                             description="Most Dask workers a plan may ask for."),
        "epochs": Param(3, type="integer", minimum=1, maximum=1000, section="Training",
                        description="Training epochs (early stopping may end sooner)."),
        "batch_size": Param(1024, type="integer", minimum=1, maximum=1_000_000, section="Training",
                            description="Global batch size (split over the training processes)."),
        "lr": Param(0.003, type="number", exclusiveMinimum=0, maximum=1, section="Training",
                    description="Learning rate (AdamW)."),
        "hidden": Param(128, type="integer", minimum=4, maximum=4096, section="Training",
                        description="Width of the hidden layers."),
        "patience": Param(2, type="integer", minimum=0, maximum=100, section="Training",
                          description="Early stopping: epochs without validation improvement."),
        "train_nproc": Param(None, type=["null", "integer"], minimum=1, maximum=64, section="Training",
                             description="Training processes (default: from the forecast plan)."),
        "compress_budget": Param(
            0.01, type="number", minimum=0, maximum=1, section="Compression",
            description="Largest tolerated metric drop (AUC for classification) of the compressed model.",
        ),
    }


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


for _spec in all_specs():
    globals()[f"leptonflow_{_spec.name}"] = build_dag(_spec)
