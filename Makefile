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

test: $(STAMP) service-test-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

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
