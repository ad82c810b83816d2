# vsnap: `make run` serves the API over the lab; `make test` runs the whole suite.
# Both set up everything they use (Debian packages, .venv, lab services and disks, the admin
# account, TLS certificate, database schema) and are safe to run again.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps

VSNAP_STATE ?= /var/lib/vsnap
VSNAP_PORT ?= 8900
VSNAP_SSH_PORT ?= 8922
# The test suite has an appliance of its own: its own state, disks, API and SSH ports.
TEST_STATE ?= /var/lib/vsnap-test
TEST_PORT ?= 8910
TEST_SSH_PORT ?= 8932
TEST_SMB_PORT ?= 4445
# ...and a partner appliance for the replication tests: its own state, disks and ports.
TEST_STATE_B ?= /var/lib/vsnap-test-b
TEST_PORT_B ?= 8920
TEST_SSH_PORT_B ?= 8942
TEST_SMB_PORT_B ?= 4446

APT_PACKAGES := zfs-fuse tgt libiscsi-bin nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils \
	samba smbclient openssh-server openssh-client iproute2 openssl util-linux procps \
	passwd nginx nftables jq

.PHONY: run test bench stop stop-test stop-bench setup setup-test deps lab bootstrap install clean-venv

deps: $(STAMPS)/venv

# Installs the Debian packages of $(1) that are missing (one apt-get for all of them).
define apt_install
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(1); do dpkg-query -W -f '$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@
endef

$(STAMPS)/apt: Makefile
	$(call apt_install,$(APT_PACKAGES))

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# Lab services and disks, then the appliance's own set-up, for the state directory in use.
setup: deps
	VSNAP_STATE=$(VSNAP_STATE) VSNAP_SSH_PORT=$(VSNAP_SSH_PORT) lab/lab.sh up
	VSNAP_STATE=$(VSNAP_STATE) $(PY) -m vsnap.bootstrap

run: setup
	VSNAP_STATE=$(VSNAP_STATE) VSNAP_PORT=$(VSNAP_PORT) VSNAP_SSH_PORT=$(VSNAP_SSH_PORT) \
		exec $(VENV)/bin/gunicorn -c vsnap/gunicorn_conf.py vsnap.wsgi:app

setup-test: deps
	VSNAP_STATE=$(TEST_STATE) VSNAP_SSH_PORT=$(TEST_SSH_PORT) VSNAP_LAB_SMB_PORT=$(TEST_SMB_PORT) lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE) $(PY) -m vsnap.bootstrap --no-account
	VSNAP_STATE=$(TEST_STATE_B) VSNAP_SSH_PORT=$(TEST_SSH_PORT_B) VSNAP_LAB_SMB_PORT=$(TEST_SMB_PORT_B) VSNAP_LAB_DISKS=3 lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE_B) $(PY) -m vsnap.bootstrap --no-account

# Lint (ruff: pyflakes, pycodestyle, import order) and type checks (mypy on vsnap/), both
# configured in pyproject.toml. `make test` runs it first and stops on a finding.
.PHONY: lint
lint: deps
	$(PY) -m ruff check vsnap tests bench
	$(PY) -m mypy vsnap

# The whole suite, the kernel lab's production-stack tests included (tests/kernel: the guest
# is built once per package list and cached, then booted for the run and stopped after it).
test: lint setup-test $(STAMPS)/apt-kernel-lab
	VSNAP_STATE=$(TEST_STATE) VSNAP_PORT=$(TEST_PORT) VSNAP_SSH_PORT=$(TEST_SSH_PORT) \
	VSNAP_STATE_B=$(TEST_STATE_B) VSNAP_PORT_B=$(TEST_PORT_B) VSNAP_SSH_PORT_B=$(TEST_SSH_PORT_B) \
		$(PY) -m pytest -ra -m 'not long and not kernel_stack' $(PYTEST_ARGS)

# Inside the kernel lab's guest (tests/kernel runs it there, on the tree `make install`
# copied): the integration tests marked `guest` or `kernel_stack`, on the production stack
# (OpenZFS, LIO, the kernel NFS server), two test appliances on lab disks beside the
# installed one, with the installed venv's Python (the guest has no network for a .venv);
# their labs go down afterwards.
GUEST_PY ?= /opt/vsnap/venv/bin/python
GUEST_TESTS ?= tests/integration
# What runs on the two test appliances once their labs are up (guest-bench runs a benchmark).
GUEST_RUN ?= $(GUEST_PY) -m pytest -ra -p no:cacheprovider -m 'guest or kernel_stack' $(GUEST_TESTS) $(PYTEST_ARGS)
.PHONY: guest-suite
guest-suite:
	VSNAP_LAB_STACK=kernel VSNAP_STATE=$(TEST_STATE) VSNAP_SSH_PORT=$(TEST_SSH_PORT) VSNAP_LAB_SMB_PORT=$(TEST_SMB_PORT) lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE) $(GUEST_PY) -m vsnap.bootstrap --no-account
	VSNAP_LAB_STACK=kernel VSNAP_STATE=$(TEST_STATE_B) VSNAP_SSH_PORT=$(TEST_SSH_PORT_B) VSNAP_LAB_SMB_PORT=$(TEST_SMB_PORT_B) VSNAP_LAB_DISKS=3 lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE_B) $(GUEST_PY) -m vsnap.bootstrap --no-account
	VSNAP_LAB_STACK=kernel VSNAP_STATE=$(TEST_STATE) VSNAP_PORT=$(TEST_PORT) VSNAP_SSH_PORT=$(TEST_SSH_PORT) \
	VSNAP_STATE_B=$(TEST_STATE_B) VSNAP_PORT_B=$(TEST_PORT_B) VSNAP_SSH_PORT_B=$(TEST_SSH_PORT_B) \
		$(GUEST_RUN); \
	rc=$$?; \
	VSNAP_LAB_STACK=kernel VSNAP_STATE=$(TEST_STATE_B) lab/lab.sh down; \
	VSNAP_LAB_STACK=kernel VSNAP_STATE=$(TEST_STATE) lab/lab.sh down; \
	exit $$rc

# Compressed and resumed stream figures (bench/bench_streams.py): OpenZFS only, so run inside
# the kernel lab's guest (lab/kernel-lab.sh ssh "cd /root/vsnap-src && make guest-bench"), on the
# test appliances as guest-suite sets them up.
.PHONY: guest-bench
guest-bench:
	$(MAKE) guest-suite GUEST_RUN="$(GUEST_PY) bench/bench_streams.py"

# The kernel lab's tests alone.
.PHONY: test-kernel
test-kernel: deps $(STAMPS)/apt-kernel-lab
	$(PY) -m pytest -ra -m kernel tests/kernel $(PYTEST_ARGS)

# The suite's long mode: only the long variants (pytest marker `long`: at least 5,000 fuzzed
# requests, ...), on the same test appliances as `make test`.
.PHONY: test-long
test-long: setup-test
	VSNAP_STATE=$(TEST_STATE) VSNAP_PORT=$(TEST_PORT) VSNAP_SSH_PORT=$(TEST_SSH_PORT) \
	VSNAP_STATE_B=$(TEST_STATE_B) VSNAP_PORT_B=$(TEST_PORT_B) VSNAP_SSH_PORT_B=$(TEST_SSH_PORT_B) \
		$(PY) -m pytest -ra -m long $(PYTEST_ARGS)

# Benchmarks against the raw commands (see bench/), on two appliances of their own: lab disks
# of 3 GiB, since the partner holds three copies of the 1 GiB replication data at once.
BENCH_STATE ?= /var/lib/vsnap-bench
BENCH_PORT ?= 8950
BENCH_SSH_PORT ?= 8952
BENCH_STATE_B ?= /var/lib/vsnap-bench-b
BENCH_PORT_B ?= 8960
BENCH_SSH_PORT_B ?= 8962
BENCH_SMB_PORT ?= 4485
BENCH_SMB_PORT_B ?= 4486

bench: deps
	@command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
	@command -v syncoid >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sanoid
	VSNAP_STATE=$(BENCH_STATE) VSNAP_SSH_PORT=$(BENCH_SSH_PORT) VSNAP_LAB_SMB_PORT=$(BENCH_SMB_PORT) VSNAP_LAB_DISK_SIZE=3G lab/lab.sh up
	VSNAP_STATE=$(BENCH_STATE) $(PY) -m vsnap.bootstrap --no-account
	VSNAP_STATE=$(BENCH_STATE_B) VSNAP_SSH_PORT=$(BENCH_SSH_PORT_B) VSNAP_LAB_SMB_PORT=$(BENCH_SMB_PORT_B) VSNAP_LAB_DISKS=3 VSNAP_LAB_DISK_SIZE=3G lab/lab.sh up
	VSNAP_STATE=$(BENCH_STATE_B) $(PY) -m vsnap.bootstrap --no-account
	VSNAP_STATE=$(BENCH_STATE) VSNAP_PORT=$(BENCH_PORT) VSNAP_SSH_PORT=$(BENCH_SSH_PORT) \
		$(PY) bench/bench_api.py
	VSNAP_STATE=$(BENCH_STATE) VSNAP_PORT=$(BENCH_PORT) VSNAP_SSH_PORT=$(BENCH_SSH_PORT) \
	VSNAP_STATE_B=$(BENCH_STATE_B) VSNAP_PORT_B=$(BENCH_PORT_B) VSNAP_SSH_PORT_B=$(BENCH_SSH_PORT_B) \
		$(PY) bench/bench_replication.py

stop:
	VSNAP_STATE=$(VSNAP_STATE) lab/lab.sh down

stop-test:
	VSNAP_STATE=$(TEST_STATE_B) lab/lab.sh down
	VSNAP_STATE=$(TEST_STATE) lab/lab.sh down

stop-bench:
	VSNAP_STATE=$(BENCH_STATE_B) lab/lab.sh down
	VSNAP_STATE=$(BENCH_STATE) lab/lab.sh down

# The kernel lab (lab/kernel-lab.sh): the production stack (OpenZFS, LIO, the kernel NFS
# server, systemd, nginx) in a Debian guest under QEMU, with this tree installed by `make
# install` inside it. Its API is forwarded to 127.0.0.1:$(KLAB_API_PORT).
KLAB_APT := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client openssl curl
KLAB_API_PORT ?= 8990
.PHONY: kernel-lab stop-kernel-lab run-kernel
$(STAMPS)/apt-kernel-lab: Makefile
	$(call apt_install,$(KLAB_APT))

kernel-lab: $(STAMPS)/apt-kernel-lab
	KLAB_API_PORT=$(KLAB_API_PORT) lab/kernel-lab.sh up

stop-kernel-lab:
	lab/kernel-lab.sh down

# The production stack, served on 127.0.0.1:$(KLAB_API_PORT) (stop it with make stop-kernel-lab).
run-kernel: kernel-lab
	@echo "the guest's API: https://127.0.0.1:$(KLAB_API_PORT)/api (user vsnapadmin, password in $${VSNAP_KERNEL_LAB:-/var/lib/vsnap-kernel-lab}/admin.password)"

# Production install (README "Running it in production"): a copy of the source in
# $(PREFIX)/src, installed with its pinned dependencies into the venv $(PREFIX)/venv (editable,
# from that copy: the bootstrap reads alembic.ini and migrations/ beside the package); the
# systemd unit and the nginx site (enabled), with $(PREFIX) and $(VSNAP_STATE) written into
# them; then the bootstrap (state, certificate, PAM, admin account, migrations). Safe to run
# again, e.g. to upgrade. It starts, stops and reloads nothing: it prints what to run.
PREFIX ?= /opt/vsnap
SYSTEMD_DIR ?= /etc/systemd/system
NGINX_DIR ?= /etc/nginx
BIN_DIR ?= /usr/local/bin
INSTALL_SRC := $(PREFIX)/src
INSTALL_VENV := $(PREFIX)/venv
INSTALL_FILES := pyproject.toml alembic.ini README.md vsnap migrations
INSTALL_RENDER := sed -e 's|/opt/vsnap|$(PREFIX)|g' -e 's|/var/lib/vsnap|$(VSNAP_STATE)|g'

install:
	@test "$$(id -u)" = 0 || { echo "make install: run it as root" >&2; exit 1; }
	@test -d $(NGINX_DIR)/sites-available || \
		{ echo "make install: no $(NGINX_DIR)/sites-available: install nginx first (apt-get install nginx)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ echo "make install: $(PYTHON) cannot make a venv: apt-get install python3-venv" >&2; exit 1; }
	@# A fresh copy of the source, swapped in whole: nothing of an older release is left.
	install -d -m 0755 $(PREFIX)
	rm -rf $(INSTALL_SRC).new $(INSTALL_SRC).old
	install -d -m 0755 $(INSTALL_SRC).new
	tar -cf - --exclude=__pycache__ --exclude='*.pyc' $(INSTALL_FILES) | \
		tar -xf - --no-same-owner --no-same-permissions -C $(INSTALL_SRC).new
	if [ -d $(INSTALL_SRC) ]; then mv $(INSTALL_SRC) $(INSTALL_SRC).old; fi
	mv $(INSTALL_SRC).new $(INSTALL_SRC)
	rm -rf $(INSTALL_SRC).old
	test -x $(INSTALL_VENV)/bin/python || $(PYTHON) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/python -m pip install -q --disable-pip-version-check -e $(INSTALL_SRC)
	mkdir -p $(SYSTEMD_DIR) $(NGINX_DIR)/sites-enabled
	$(INSTALL_RENDER) systemd/vsnap-api.service > $(SYSTEMD_DIR)/.vsnap-api.service.tmp
	install -m 0644 $(SYSTEMD_DIR)/.vsnap-api.service.tmp $(SYSTEMD_DIR)/vsnap-api.service
	rm -f $(SYSTEMD_DIR)/.vsnap-api.service.tmp
	$(INSTALL_RENDER) nginx/vsnap.conf > $(NGINX_DIR)/sites-available/.vsnap.conf.tmp
	install -m 0644 $(NGINX_DIR)/sites-available/.vsnap.conf.tmp $(NGINX_DIR)/sites-available/vsnap.conf
	rm -f $(NGINX_DIR)/sites-available/.vsnap.conf.tmp
	ln -sfn $(NGINX_DIR)/sites-available/vsnap.conf $(NGINX_DIR)/sites-enabled/vsnap.conf
	@# The command on root's PATH (`sudo vsnap ...`, as monitoring over SSH runs it).
	mkdir -p $(BIN_DIR) && ln -sfn $(INSTALL_VENV)/bin/vsnap $(BIN_DIR)/vsnap
	cd $(INSTALL_SRC) && VSNAP_STATE=$(VSNAP_STATE) $(INSTALL_VENV)/bin/python -m vsnap.bootstrap
	@if [ "$(NGINX_DIR)" = /etc/nginx ] && command -v nginx >/dev/null; then \
		nginx -t -q || { echo "make install: nginx -t refused the configuration (above)" >&2; exit 1; }; fi
	@echo
	@echo "vsnap is installed: $(INSTALL_VENV) (from $(INSTALL_SRC)), $(SYSTEMD_DIR)/vsnap-api.service,"
	@echo "$(NGINX_DIR)/sites-enabled/vsnap.conf; state in $(VSNAP_STATE). Next steps:"
	@echo "  systemctl daemon-reload && systemctl enable --now vsnap-api nginx"
	@echo "  systemctl reload nginx         # if nginx was running already"
	@echo "  systemctl restart vsnap-api    # if this was an upgrade: the new code runs from then on"
	@echo "  curl --cacert $(VSNAP_STATE)/tls/vsnap.crt -u vsnapadmin https://localhost:8900/api/system"
	@echo "  journalctl -u vsnap-api -f     # the API's log"
