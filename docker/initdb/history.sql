-- leptonflow's own run-history database (Airflow 3 tasks cannot use the metadata DB).
CREATE DATABASE history OWNER airflow;
