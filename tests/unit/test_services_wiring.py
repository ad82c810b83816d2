"""The service wiring (Services.build): the links between services are made in one place, in
a stated order, and the crash tests' runner only where they arm it."""
from __future__ import annotations

import pytest

from vsnap import faults
from vsnap.config import Settings
from vsnap.drivers.runner import Runner
from vsnap.services import Services


@pytest.fixture
def services(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENVIRONMENT, raising=False)
    return Services.build(Settings(state_dir=tmp_path))


def test_guards_come_first_then_shares_then_lun_mappings(services):
    attachments = services.volumes.attachments
    assert services.pools.attachments is attachments  # one registry for volumes and pools
    assert attachments.holders == [services.replication.relationships, services.shares, services.hosts]


def test_init_makes_the_default_pool_through_the_pool_service(services):
    assert services.system.make_default_pool == services.pools.create_default
    assert services.pools.system is services.system.identity  # the id stamped on pools is the system's
    assert services.pools.system.id == services.system.id


def test_a_fresh_login_gives_samba_the_password(services):
    assert services.auth.on_login == [services.shares.sync_smb_password]


def test_the_ordinary_runner_unless_a_crash_test_arms_one(tmp_path, monkeypatch, services):
    runner = services.shares.smb.runner
    assert type(runner) is Runner
    monkeypatch.setenv(faults.ENVIRONMENT, "7")
    armed = Services.build(Settings(state_dir=tmp_path / "armed"))
    assert isinstance(armed.shares.smb.runner, faults.CrashingRunner)
    assert armed.shares.smb.runner.kill_after == 7
