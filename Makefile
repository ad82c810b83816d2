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
# ...and a partner appliance for the replication tests: its own state, disks and ports.
TEST_STATE_B ?= /var/lib/vsnap-test-b
TEST_PORT_B ?= 8920
TEST_SSH_PORT_B ?= 8942

APT_PACKAGES := zfs-fuse tgt libiscsi-bin nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils \
	samba smbclient openssh-server openssh-client iproute2 openssl util-linux procps \
	passwd nginx

.PHONY: run test bench stop stop-test setup setup-test deps lab bootstrap install clean-venv

deps: $(STAMPS)/venv

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f '$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

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
	VSNAP_STATE=$(TEST_STATE) VSNAP_SSH_PORT=$(TEST_SSH_PORT) lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE) $(PY) -m vsnap.bootstrap --no-account
	VSNAP_STATE=$(TEST_STATE_B) VSNAP_SSH_PORT=$(TEST_SSH_PORT_B) VSNAP_LAB_DISKS=3 lab/lab.sh up
	VSNAP_STATE=$(TEST_STATE_B) $(PY) -m vsnap.bootstrap --no-account

test: setup-test
	VSNAP_STATE=$(TEST_STATE) VSNAP_PORT=$(TEST_PORT) VSNAP_SSH_PORT=$(TEST_SSH_PORT) \
	VSNAP_STATE_B=$(TEST_STATE_B) VSNAP_PORT_B=$(TEST_PORT_B) VSNAP_SSH_PORT_B=$(TEST_SSH_PORT_B) \
		$(PY) -m pytest -ra $(PYTEST_ARGS)

# Benchmarks against the raw commands, on the test lab's two appliances (see bench/).
bench: setup-test
	VSNAP_STATE=$(TEST_STATE) VSNAP_PORT=$(TEST_PORT) VSNAP_SSH_PORT=$(TEST_SSH_PORT) \
	VSNAP_STATE_B=$(TEST_STATE_B) VSNAP_PORT_B=$(TEST_PORT_B) VSNAP_SSH_PORT_B=$(TEST_SSH_PORT_B) \
		$(PY) bench/bench_replication.py

stop:
	VSNAP_STATE=$(VSNAP_STATE) lab/lab.sh down

stop-test:
	VSNAP_STATE=$(TEST_STATE_B) lab/lab.sh down
	VSNAP_STATE=$(TEST_STATE) lab/lab.sh down
