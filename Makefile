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

# --- listening sockets (issue 4): HTTP throughput of the status module -----------
# `wrk` is Debian's HTTP load tool; installed once, only when missing.
.PHONY: install-wrk bench-http
install-wrk:
	command -v wrk >/dev/null 2>&1 || (apt-get update && apt-get install -y wrk)

# Short interleaved runs by default; e.g. BENCH_ARGS="--duration 10 --rounds 5".
bench-http: $(STAMP) install-wrk
	$(PY) bench/http_throughput.py $(BENCH_ARGS)
