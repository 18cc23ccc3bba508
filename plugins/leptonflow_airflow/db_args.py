"""SQLAlchemy connect args for the embedded SQLite metadata DB (``[database] sql_alchemy_connect_args``).

SQLite allows one writer at a time. The scheduler, api-server, dag-processor, triggerer, CLI calls and
task runners all write, and Python's default 5 s busy timeout turns a slow writer on a loaded 2-core
machine into "database is locked" errors inside the scheduler loop. Waiting up to a minute instead
serialises those writes, which is what a single-file database can do anyway.
"""

SQLITE_SYNC: dict[str, object] = {"timeout": 60}
# a separate dict: Airflow adds check_same_thread to the sync one in place
SQLITE_ASYNC: dict[str, object] = {"timeout": 60}
