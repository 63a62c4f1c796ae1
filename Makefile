# oversipd: `make run` starts the daemon on ./oversipd.conf, `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
MOD_PG := mods/oversip-mod-postgresql
MOD_PG_STAMP := $(VENV)/.installed-mod-postgresql

.PHONY: run test check clean

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# compat: the core on sys.path itself.  setuptools' default editable
	# finder runs after the path finder, so the `oversipd/` directory that an
	# installed module distribution brings (oversip-mod-*) would shadow the
	# core as an empty namespace package (pypa/setuptools#3557).
	$(PIP) install --quiet -e '.[test]' --config-settings editable_mode=compat
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

test: $(STAMP) $(MOD_PG_STAMP) postgresql-server
	$(PY) -m pytest -q $(PYTEST_ARGS)

# oversip-mod-postgresql: a distribution of its own, installed (editable)
# next to the core; tests/test_mod_postgresql.py uses it.
$(MOD_PG_STAMP): $(STAMP) $(MOD_PG)/setup.cfg $(MOD_PG)/pyproject.toml
	$(PIP) install --quiet -e $(MOD_PG)
	touch $@

# The PostgreSQL tests start a private server (initdb into a temporary
# directory) from Debian's postgresql package: install it when missing,
# without the cluster Debian would otherwise create and start.
.PHONY: postgresql-server
postgresql-server:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then \
	    mkdir -p /etc/postgresql-common && \
	    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 \
	    apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql; \
	fi

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist *.egg-info .pytest_cache

# --- listening sockets (issue 4): HTTP throughput of the status module -----------
# `wrk` is Debian's HTTP load tool; installed once, only when missing.
.PHONY: install-wrk bench-http
install-wrk:
	command -v wrk >/dev/null 2>&1 || (apt-get update && apt-get install -y wrk)

# Short interleaved runs by default; e.g. BENCH_ARGS="--duration 10 --rounds 5".
bench-http: $(STAMP) install-wrk
	$(PY) bench/http_throughput.py $(BENCH_ARGS)

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
