# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run dev test bench clean

$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS) pytest==9.2.0
	touch $(STAMP)

install: $(STAMP)

# Serve on HOST:PORT (127.0.0.1:9090) with gunicorn; configuration: README.
run: install
	$(VENV)/bin/gunicorn -c gunicorn.conf.py _wsgi:app

# Flask's development server, same app.
dev: install
	$(PY) _wsgi.py

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
