"""Bad dataset specs, shown as this file's Airflow import error (it defines no DAG).

Airflow 3.3 reports a DAG file that raises as that file's import error and keeps none of its DAGs
(apache/airflow#53971); and any import error recorded for a file marks every DAG of that file stale
(``has_import_errors``), even ones that parsed. So leptonflow_pipeline.py builds the DAGs of the
good specs and never raises over a bad one, and this separate file raises one SpecError naming
every bad spec file and field (``<spec file>: <field path>: <problem>``). It shows under Import Errors in the UI and in
``airflow dags list-import-errors``, and goes away once every spec passes
``python -m tasks spec check``. (Keep the words "airflow" and "dag" in this file: Airflow's
safe-mode heuristic skips .py files without them.)
"""

from __future__ import annotations

from tasks.context import Settings
from tasks.spec import SpecError, scan_specs

_specs_dir = Settings.from_env().specs_dir
_bad = scan_specs(_specs_dir).errors
if _bad:
    raise SpecError.combine(_bad, source=str(_specs_dir))
