# oversipd: `make run` starts the daemon on ./oversipd.conf, `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
MOD_PG := mods/oversip-mod-postgresql
MOD_PG_STAMP := $(VENV)/.installed-mod-postgresql
MOD_MYSQL := mods/oversip-mod-mysql
MOD_MYSQL_STAMP := $(VENV)/.installed-mod-mysql
JS_TEST_STAMP := tests/js/node_modules/.installed
PHONE_BUNDLE := phone/build/jssip.js

.PHONY: run test check clean

$(STAMP): setup.cfg setup.py pyproject.toml Makefile oversipd/sip/syntax/_speedups.c oversipd/sip/syntax/uri.py oversipd/sip/syntax/message.py
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

# oversipd.conf's wss listener (SIP.md §12) needs a certificate: a
# self-signed one for localhost, made once, in a git-ignored directory.
# Your own: point [tls] certificate / private_key of oversipd.conf at it.
RUN_TLS := run-tls
RUN_CERT := $(RUN_TLS)/cert.pem
$(RUN_CERT):
	mkdir -p $(RUN_TLS)
	openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN=localhost \
	  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	  -keyout $(RUN_TLS)/key.pem -out $(RUN_CERT) 2>/dev/null
	chmod 600 $(RUN_TLS)/key.pem

# git does not keep directory modes: a checkout made under umask 002 would
# leave modules.d group-writable, and oversipd refuses that (StrictModes).
run: $(STAMP) $(RUN_CERT) $(PHONE_BUNDLE)
	chmod go-w modules.d modules.d/*.py
	$(VENV)/bin/oversipd run -c oversipd.conf

check: $(STAMP) $(RUN_CERT) $(PHONE_BUNDLE)
	chmod go-w modules.d modules.d/*.py
	$(VENV)/bin/oversipd check -c oversipd.conf

test: $(STAMP) $(MOD_PG_STAMP) $(MOD_MYSQL_STAMP) postgresql-server mariadb-server dnsmasq-base sip-tester service-test-deps baresip sip-scanners kamailio-server $(JS_TEST_STAMP) $(PHONE_BUNDLE) chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

# oversip-mod-postgresql: a distribution of its own, installed (editable)
# next to the core; tests/test_mod_postgresql.py uses it.
$(MOD_PG_STAMP): $(STAMP) $(MOD_PG)/setup.cfg $(MOD_PG)/pyproject.toml
	$(PIP) install --quiet -e $(MOD_PG)
	touch $@

# oversip-mod-mysql, likewise; tests/test_mod_mysql.py uses it.
$(MOD_MYSQL_STAMP): $(STAMP) $(MOD_MYSQL)/setup.cfg $(MOD_MYSQL)/pyproject.toml
	$(PIP) install --quiet -e $(MOD_MYSQL)
	touch $@

# The MySQL tests start a private MariaDB (mariadb-install-db into a
# temporary datadir, mariadbd on a unix socket): install Debian's
# mariadb-server when missing, without starting Debian's own service (a
# policy-rc.d that forbids starting services, only for the install).
.PHONY: mariadb-server
mariadb-server:
	@if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then \
	  policy=/usr/sbin/policy-rc.d; own_policy=""; \
	  if [ ! -e $$policy ]; then \
	    printf '#!/bin/sh\nexit 101\n' > $$policy && chmod 755 $$policy && own_policy=1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server; \
	  status=$$?; \
	  if [ -n "$$own_policy" ]; then rm -f $$policy; fi; \
	  exit $$status; \
	fi

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

# The SIP DNS tests (tests/dns_server.py) serve their zones from a private
# dnsmasq: Debian's dnsmasq-base is the binary alone, without the system
# service that the `dnsmasq` package would start.
.PHONY: dnsmasq-base
dnsmasq-base:
	@if [ ! -x /usr/sbin/dnsmasq ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsmasq-base; \
	fi

# The SIP tests drive oversipd with sipp (Debian's sip-tester): installed when missing.
.PHONY: sip-tester
sip-tester:
	@command -v sipp >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester; }

# Two softphones call each other through `make run`'s configuration
# (tests/test_sip_registrar.py): Debian's baresip, without its GUI and video recommends.
.PHONY: baresip
baresip:
	@command -v baresip >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends baresip-core; }

# tests/test_sip_scanners.py runs the attack tools against oversipd (127.0.0.1
# only): Debian's sipvicious (svmap, svwar, svcrack) and sipsak, when missing.
.PHONY: sip-scanners
sip-scanners:
	@{ command -v svwar >/dev/null 2>&1 && command -v sipsak >/dev/null 2>&1; } || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sipvicious sipsak; }

# tests/test_sip_jssip.py and test_sip_sipjs.py run JsSIP and SIP.js under Node,
# tests/test_sip_browsers.py drives Chromium with playwright-core (SIP.md §12):
# Debian's nodejs and npm when missing, then the packages pinned in
# tests/js/package-lock.json.
.PHONY: nodejs
nodejs:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

$(JS_TEST_STAMP): tests/js/package.json tests/js/package-lock.json | nodejs
	npm ci --prefix tests/js --no-audit --no-fund --silent
	touch $@

# The /phone page of the status listener (modules.d/status.py, SIP.md §12)
# runs JsSIP in the browser.  JsSIP's npm package is CommonJS for Node only:
# esbuild (pinned next to it in phone/package-lock.json) bundles it into one
# script that the page loads from us (no CDN).  phone/ is its own small
# package, so that `make run` installs no test tool.
$(PHONE_BUNDLE): phone/package.json phone/package-lock.json | nodejs
	npm ci --prefix phone --no-audit --no-fund --silent
	phone/node_modules/.bin/esbuild phone/node_modules/jssip/lib/JsSIP.js --bundle --format=iife \
	  --global-name=JsSIP --minify --log-level=warning --outfile=$@

# tests/test_sip_browsers.py: two headless Chromium pages call each other
# (driven by playwright-core from tests/js): Debian's chromium when missing.
.PHONY: chromium
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

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

$(BENCH_STAMP): bench/requirements.txt setup.cfg setup.py pyproject.toml $(wildcard oversipd/*.py oversipd/*/*.py oversipd/*/*/*.py oversipd/*/*/*.c)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	# oversipd's dependencies as setup.cfg lists them, then oversipd itself anew
	# (its version does not change with its sources).
	$(BENCH_VENV)/bin/pip install --quiet .
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

# --- database drivers (issue 13): primary-key SELECTs/s through a pool, 2 workers -----
# asyncmy, aiomysql (MariaDB) and psycopg (PostgreSQL, for scale) in one run,
# against private servers; e.g. BENCH_ARGS="--duration 10 --rounds 5".
BENCH_DB_STAMP := $(BENCH_VENV)/.installed-db

$(BENCH_DB_STAMP): $(BENCH_STAMP) bench/requirements-db.txt $(wildcard $(MOD_PG)/oversipd/modules/*.py $(MOD_MYSQL)/oversipd/modules/*.py)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements-db.txt
	$(BENCH_VENV)/bin/pip install --quiet --no-deps --force-reinstall ./$(MOD_PG) ./$(MOD_MYSQL)
	rm -rf build $(MOD_PG)/build $(MOD_MYSQL)/build
	touch $@

.PHONY: bench-db
bench-db: $(BENCH_DB_STAMP) mariadb-server postgresql-server
	$(BENCH_PY) bench/db_queries.py $(BENCH_ARGS)

# --- SIP message parsing (issue 10): oversipd.sip next to sipmessage and sippy ------
# µs per 1 KB INVITE parsed and read (Via, From, To, CSeq, Call-ID), in the bench
# venv (sipmessage and sippy come from bench/requirements.txt, never oversipd's).
# e.g. BENCH_SIP_PARSE_ARGS="--rounds 31 --number 5000" on a quiet machine.
.PHONY: bench-sip-parse
bench-sip-parse: $(BENCH_STAMP)
	$(BENCH_PY) bench/sip_parse.py $(BENCH_SIP_PARSE_ARGS)

# --- WebSocket frames (issue 19): websockets next to wsproto, sans-I/O -----------------
# µs per 1 KB SIP message: a masked client frame parsed, a text frame serialised.
.PHONY: bench-ws-frames
bench-ws-frames: $(BENCH_STAMP)
	$(BENCH_PY) bench/ws_frames.py $(BENCH_ARGS)

# --- CPU per SIP message in one worker's core, in-process (issue 11) ---------------
# A proxied call (INVITE/180/200/ACK/BYE/200) and OPTIONS through SipCore and
# the ProxyEngine on real UDP sockets; --stages says where the time goes.
# Before/after: BENCH_SIP_CPU_ARGS="--tree /tmp/base --tree . --rounds 9".
.PHONY: bench-sip-cpu
bench-sip-cpu: $(STAMP)
	$(PY) -m bench.sip_cpu $(BENCH_SIP_CPU_ARGS)

# --- TCP work over the workers (issue 23): accepted connections, one trunk's calls ---
# Each worker's share; before/after: BENCH_ARGS="--tree /tmp/before --tree .".
.PHONY: bench-tcp-spread
bench-tcp-spread: $(STAMP) sip-tester
	$(PY) -m bench.tcp_spread $(BENCH_ARGS)

# --- SIP (issues 10, 11): oversipd next to Kamailio, SIPp as the client ----------
# Debian's kamailio, installed when missing (sipp comes from the sip-tester
# target above).  The benchmark runs Kamailio itself, in the foreground: the
# package's own service is neither needed nor started by it.
.PHONY: kamailio-server bench-sip
kamailio-server:
	@command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio; }

# bench-sip's kamailio-kemi: Kamailio's routes in Python (app_python3).
.PHONY: kamailio-python
kamailio-python: kamailio-server
	@dpkg -s kamailio-python3-modules >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio-python3-modules; }

# The highest OPTIONS/s and calls/s with 0 failures, and CPU per message (about
# 10 minutes on 2 cores); writes its section of docs/BENCHMARKS.md.  A short
# smoke: BENCH_ARGS="--duration 3 --rounds 1 --probe-duration 2".
bench-sip: $(BENCH_STAMP) sip-tester kamailio-server kamailio-python
	PATH="$$PATH:/usr/sbin" BENCH_COMMAND="make bench-sip$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
	  $(BENCH_PY) -m bench.sip --write docs/BENCHMARKS.md --json bench/results/sip.json $(BENCH_ARGS)

# --- WebSocket and TLS (issue 19): oversipd next to Kamailio's websocket and tls modules ---
# MESSAGE/s relayed between WS clients, memory per idle WSS/WS connection (10 000),
# new TLS handshakes/s (about 15 minutes on 2 cores); writes its section of
# docs/BENCHMARKS.md.  Debian's kamailio ships websocket.so and tls.so in packages
# of their own, installed here when missing.  A short smoke:
# BENCH_ARGS="--duration 2 --rounds 1 --probe-duration 1 --idle wss:200,ws:200 --idle-hold 3"
.PHONY: kamailio-ws-modules bench-ws
KAMAILIO_MODULES := /usr/lib/x86_64-linux-gnu/kamailio/modules
kamailio-ws-modules: kamailio-server
	@[ -e $(KAMAILIO_MODULES)/websocket.so ] && [ -e $(KAMAILIO_MODULES)/tls.so ] || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    kamailio-websocket-modules kamailio-tls-modules; }

bench-ws: $(BENCH_STAMP) kamailio-ws-modules
	PATH="$$PATH:/usr/sbin" BENCH_COMMAND="make bench-ws$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
	  $(BENCH_PY) -m bench.ws --write docs/BENCHMARKS.md --json bench/results/ws.json $(BENCH_ARGS)

# --- registrar (issue 20): oversipd's registrar next to Kamailio auth_db + usrloc -----
# Authenticated REGISTERs/s and calls/s to registered users, oversipd (server.py)
# on SQLite and PostgreSQL next to Kamailio on db_sqlite and db_postgres, SIPp as
# the phones (bench/register.py; writes its section of docs/BENCHMARKS.md).  Runs
# from the test virtualenv (psycopg from oversip-mod-postgresql) with a private
# PostgreSQL.  A short smoke: BENCH_ARGS="--users 200 --duration 2 --rounds 1 --probe-duration 1".
.PHONY: kamailio-db-modules bench-register
kamailio-db-modules: kamailio-server
	@[ -e /usr/share/kamailio/db_sqlite/auth_db-create.sql ] && [ -e /usr/share/kamailio/postgres/auth_db-create.sql ] || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio-sqlite-modules kamailio-postgres-modules; }

bench-register: $(STAMP) $(MOD_PG_STAMP) sip-tester kamailio-db-modules postgresql-server
	PATH="$$PATH:/usr/sbin" BENCH_COMMAND="make bench-register$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
	  $(PY) -m bench.register --write docs/BENCHMARKS.md --json bench/results/register.json $(BENCH_ARGS)

# --- overload (issue 22, SIP.md §15): one worker under ~3x its capacity ---------
# Unique OPTIONS and INVITEs over UDP and TCP from SIPp for 60 s each: RSS, 503s,
# latency of the accepted requests, recovery (bench/overload.py; over 5 minutes,
# both cores). e.g. BENCH_ARGS="--duration 20 --transport tcp --max-transactions 50000";
# --transport all adds a run with a TCP connection per call (SIPp -t tn).
.PHONY: bench-overload
bench-overload: $(STAMP) sip-tester
	$(PY) bench/overload.py $(BENCH_ARGS)

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
soak: $(STAMP) $(MOD_PG_STAMP) postgresql-server sip-tester
	PYTHONPATH=tests $(PY) -m soak.storm --cycles $(STORM_CYCLES) $(if $(SOAK_SEED),--seed $(SOAK_SEED))
	PYTHONPATH=tests $(PY) -m soak --seconds $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(if $(SOAK_TRACE),--trace)
