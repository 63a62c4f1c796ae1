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

test: $(STAMP) $(MOD_PG_STAMP) postgresql-server service-test-deps
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

# --- install / uninstall (issue 3) ------------------------------------------
# `make install` puts oversipd in its own virtual environment under
# $(PREFIX)/lib/oversipd, on $(INSTALL_PYTHON): the service must not run on
# an interpreter under /root or /home, which its ProtectHome= hides.
# DESTDIR stages the files for a package; without it the system user, the
# tmpfiles entry and systemd's unit list are brought up to date as well.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
INSTALL_PYTHON ?= /usr/bin/python3
BINDIR = $(PREFIX)/bin
APPDIR = $(PREFIX)/lib/oversipd
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
CONFDIR = $(SYSCONFDIR)/oversipd

.PHONY: install uninstall install-activate

install: $(STAMP)
	rm -rf build
	$(INSTALL_PYTHON) -m venv --without-pip --clear $(DESTDIR)$(APPDIR)
	$(PIP) --python $(DESTDIR)$(APPDIR)/bin/python install --quiet --no-compile --no-warn-script-location .
	rm -rf build
	$(INSTALL_PYTHON) -m compileall -q $(if $(DESTDIR),-s $(DESTDIR) -p /) $(DESTDIR)$(APPDIR)/lib
	sed -i '1s|^#!.*|#!$(APPDIR)/bin/python|' $(DESTDIR)$(APPDIR)/bin/oversipd
	install -d $(DESTDIR)$(BINDIR)
	ln -sfn $(APPDIR)/bin/oversipd $(DESTDIR)$(BINDIR)/oversipd
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	sed -e 's|/usr/local/bin/oversipd|$(BINDIR)/oversipd|' -e 's|/etc/oversipd/|$(CONFDIR)/|' \
	    systemd/oversipd.service > $(DESTDIR)$(UNITDIR)/oversipd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/oversipd.service
	install -m 644 systemd/oversipd.sysusers $(DESTDIR)$(SYSUSERSDIR)/oversipd.conf
	install -m 644 systemd/oversipd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/oversipd.conf
	install -d -m 755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/modules.d
	if [ -e $(DESTDIR)$(CONFDIR)/oversipd.conf ]; then \
	    echo "keeping the existing $(DESTDIR)$(CONFDIR)/oversipd.conf"; \
	else \
	    install -m 644 etc/oversipd.conf $(DESTDIR)$(CONFDIR)/oversipd.conf; \
	fi
	$(if $(DESTDIR),,$(MAKE) --no-print-directory install-activate)

# What a package's post-install script does: the user, /run/oversipd, the unit.
install-activate:
	systemd-sysusers $(SYSUSERSDIR)/oversipd.conf
	systemd-tmpfiles --create $(TMPFILESDIR)/oversipd.conf
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The system user and a configuration that was changed are left in place.
uninstall:
	$(if $(DESTDIR),,if [ -d /run/systemd/system ]; then systemctl disable --now oversipd.service || true; fi)
	rm -rf $(DESTDIR)$(APPDIR)
	rm -f $(DESTDIR)$(BINDIR)/oversipd $(DESTDIR)$(UNITDIR)/oversipd.service \
	    $(DESTDIR)$(SYSUSERSDIR)/oversipd.conf $(DESTDIR)$(TMPFILESDIR)/oversipd.conf
	if cmp -s etc/oversipd.conf $(DESTDIR)$(CONFDIR)/oversipd.conf; then \
	    rm -f $(DESTDIR)$(CONFDIR)/oversipd.conf; \
	elif [ -e $(DESTDIR)$(CONFDIR)/oversipd.conf ]; then \
	    echo "keeping the changed $(DESTDIR)$(CONFDIR)/oversipd.conf"; \
	fi
	rmdir $(DESTDIR)$(CONFDIR)/modules.d $(DESTDIR)$(CONFDIR) 2>/dev/null || true
	$(if $(DESTDIR),,if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi)

# The service tests boot a real systemd in namespaces (unshare, nsenter,
# setpriv), add a throw-away user (useradd) and run `make install`, whose
# service interpreter needs the venv module.  Installs only what is missing.
.PHONY: service-test-deps
service-test-deps:
	@missing=""; \
	command -v systemd-analyze >/dev/null && [ -x /lib/systemd/systemd ] || missing="$$missing systemd"; \
	command -v unshare >/dev/null && command -v nsenter >/dev/null && command -v setpriv >/dev/null \
	    || missing="$$missing util-linux"; \
	command -v useradd >/dev/null || missing="$$missing passwd"; \
	$(INSTALL_PYTHON) -c 'import venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The fault campaign (docs/RELIABILITY.md): `make soak SOAK_SECONDS=120 SOAK_SEED=N`;
# a failing run prints the seed and step to replay.
# The fork storm (tests/soak/storm.py, issue 14) runs first: STORM_CYCLES forks.
SOAK_SECONDS ?= 120
STORM_CYCLES ?= 300
.PHONY: soak
soak: $(STAMP)
	PYTHONPATH=tests $(PY) -m soak.storm --cycles $(STORM_CYCLES) $(if $(SOAK_SEED),--seed $(SOAK_SEED))
	PYTHONPATH=tests $(PY) -m soak --seconds $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(if $(SOAK_TRACE),--trace)
