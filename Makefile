# The two commands of the README: `make run` and `make test` (and `make worker` at scale).
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run dev worker test bench clean

$(STAMP): $(REQUIREMENTS) requirements-test.txt requirements-lac.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS) -r requirements-test.txt
	# LAC's character embedding starts scratch models' span taggers (uie/lac.py); its
	# sdist builds only without isolation (setup.py imports pkg_resources), and is never imported
	$(PY) -m pip install --quiet wheel
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -r requirements-lac.txt
	touch $(STAMP)

install: $(STAMP)

# Serve on HOST:PORT (127.0.0.1:9090) with gunicorn; configuration: README.
run: install
	$(VENV)/bin/gunicorn -c gunicorn.conf.py _wsgi:app

# A training worker for the scale-out mode (REDIS_URL, shared MODEL_DIR; README "Running at scale").
worker: install
	$(PY) job_queue.py worker

# Flask's development server, same app.
dev: install
	$(PY) _wsgi.py

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
