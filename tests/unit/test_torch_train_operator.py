"""TorchTrainOperator: gpu pool by default, the train step, DAG default_args honoured, on_kill stops the ranks."""

from __future__ import annotations

import datetime
import subprocess

from airflow.sdk import DAG
from leptonflow_airflow.torch_train import TorchTrainOperator

from tasks.training import train


def test_defaults_and_dag_args():
    with DAG("lf_op_test", schedule=None, start_date=datetime.datetime(2026, 11, 1),
             default_args={"retries": 3}):
        op = TorchTrainOperator(task_id="train", dataset="events")
        other = TorchTrainOperator(task_id="train_cpu", dataset="events", pool="default_pool", step="clean")
    assert (op.pool, op.step, op.dataset, op.retries) == ("gpu", "train", "events", 3)
    assert (other.pool, other.step) == ("default_pool", "train")


def test_on_kill_stops_the_launched_training():
    proc = subprocess.Popen(["sleep", "60"])
    train._RUNNING.add(proc)
    try:
        TorchTrainOperator(task_id="train", dataset="events").on_kill()
        assert proc.wait(timeout=30) != 0
    finally:
        train._RUNNING.discard(proc)
        if proc.poll() is None:
            proc.kill()
