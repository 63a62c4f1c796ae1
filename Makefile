# oversipd: `make run` starts the daemon on ./oversipd.conf, `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: run test check clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP)

# git does not keep directory modes: a checkout made under umask 002 would
# leave modules.d group-writable, and oversipd refuses that (StrictModes).
run: $(STAMP)
	chmod go-w modules.d modules.d/*.py
	$(VENV)/bin/oversipd run -c oversipd.conf

check: $(STAMP)
	chmod go-w modules.d modules.d/*.py
	$(VENV)/bin/oversipd check -c oversipd.conf

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# --- benchmarks (issue 6): oversipd side by side with gunicorn ------------------
# A bench-only virtualenv: gunicorn and the profilers never become
# dependencies of oversipd.  oversipd is installed as users get it (not
# editable), again whenever its sources change.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: bench bench-quick bench-profile bench-venv

$(BENCH_STAMP): bench/requirements.txt setup.cfg pyproject.toml $(wildcard oversipd/*.py oversipd/*/*.py)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	$(BENCH_VENV)/bin/pip install --quiet --no-deps --force-reinstall .
	rm -rf build
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

# The full run (about 7 minutes on 2 cores); writes docs/BENCHMARKS.md.
bench: $(BENCH_STAMP)
	BENCH_COMMAND="make bench" $(BENCH_PY) -m bench --write docs/BENCHMARKS.md --json bench/results/latest.json

# A short run (well under 2 minutes) for development: fewer runs, 3 s idle windows.
bench-quick: $(BENCH_STAMP)
	BENCH_COMMAND="make bench-quick" $(BENCH_PY) -m bench --quick --write bench/results/quick.md

# Where oversipd's start, respawn and stop time goes: phase stamps, imports, pyinstrument.
bench-profile: $(BENCH_STAMP)
	$(BENCH_PY) -m bench.profile
