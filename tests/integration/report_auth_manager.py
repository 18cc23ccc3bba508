"""An auth manager for the report-auth test: Airflow's SimpleAuthManager, except that user ``alice``
may read only the runs of DAG ``leptonflow_other`` (so the test can show that the report pages ask
the auth manager per DAG, not only "is someone logged in"). Loaded by the api-server through
``AIRFLOW__CORE__AUTH_MANAGER``."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

RESTRICTED_USER = "alice"
ALLOWED_DAG = "leptonflow_other"


class OneDagForAliceAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if user.get_name() == RESTRICTED_USER:
            return method == "GET" and details is not None and details.id == ALLOWED_DAG
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
