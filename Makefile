# The two commands a newcomer types:  `make demo`  and  `make test`.
# Both create the virtualenv and install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test airflow venv system-deps lint bench clean-demo

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# Servers the tests start themselves (PostgreSQL) and the browser for the UI test.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then \
	  echo "installing PostgreSQL server, Chromium and docker-compose (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium docker-compose >/dev/null; \
	fi

## make demo: the whole pipeline DAG for one interval through the real Airflow scheduler, then a summary
demo: venv
	$(PY) -m leptonflow_airflow.stack demo $(DEMO_ARGS)

## make airflow: Airflow UI + scheduler + triggerer on http://127.0.0.1:8080 until Ctrl-C
airflow: venv
	$(PY) -m leptonflow_airflow.stack up

## make test: everything CI runs
test: venv system-deps
	$(PY) -m ruff check dags plugins tasks tests bench
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

lint: venv
	$(PY) -m ruff check dags plugins tasks tests bench

bench: venv
	$(PY) bench/clean_split.py && $(PY) bench/validate.py && $(PY) bench/crypto.py && \
	$(PY) bench/forecast.py && $(PY) bench/train.py && $(PY) bench/compress.py

clean-demo:
	rm -rf var .airflow
