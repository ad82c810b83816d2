"""Settings.from_env: defaults, the lab's lab.env, and the environment winning over it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vsnap.config import Settings


def _lab_env(state: Path, text: str) -> None:
    (state / "lab").mkdir(parents=True, exist_ok=True)
    (state / "lab" / "lab.env").write_text(text)


def test_defaults(tmp_path):
    s = Settings.from_env({"VSNAP_STATE": str(tmp_path)})
    assert s.state_dir == tmp_path
    assert s.port == 8900 and s.ssh_port == 8922
    assert s.disks == []
    assert (s.admin_user, s.admin_group, s.pam_service) == ("vsnapadmin", "vsnap", "vsnap")
    assert (s.auth_cache_seconds, s.auth_fail_limit, s.auth_fail_window) == (3.0, 10, 60.0)
    assert s.command_timeout == 120.0
    assert s.iqn_prefix == "iqn.2026-11.local.vsnap"
    assert s.trusted_proxy is False
    assert s.database_path == tmp_path / "vsnap.db"
    assert s.database_url == f"sqlite:///{tmp_path}/vsnap.db"
    assert s.system_id_file == tmp_path / "system-id"
    assert s.tls_cert == tmp_path / "tls" / "vsnap.crt"
    assert s.tls_key == tmp_path / "tls" / "vsnap.key"


def test_default_state_dir():
    assert Settings.from_env({}).state_dir == Path("/var/lib/vsnap")


def test_lab_env_supplies_disks(tmp_path):
    _lab_env(tmp_path, "# written by lab/lab.sh\n\nVSNAP_DISKS=/dev/loop0,/dev/loop1,/dev/loop2\n")
    assert Settings.from_env({"VSNAP_STATE": str(tmp_path)}).disks == [
        "/dev/loop0", "/dev/loop1", "/dev/loop2"]


def test_lab_env_quotes_and_other_keys(tmp_path):
    _lab_env(tmp_path, 'VSNAP_DISKS="/dev/loop4, /dev/loop5"\nVSNAP_PORT=\'9001\'\nnot a setting\n')
    s = Settings.from_env({"VSNAP_STATE": str(tmp_path)})
    assert s.disks == ["/dev/loop4", "/dev/loop5"]
    assert s.port == 9001


def test_environment_overrides_lab_env(tmp_path):
    _lab_env(tmp_path, "VSNAP_DISKS=/dev/loop0,/dev/loop1\nVSNAP_PORT=9001\n")
    s = Settings.from_env({"VSNAP_STATE": str(tmp_path), "VSNAP_DISKS": "/dev/sdb",
                           "VSNAP_PORT": "8910"})
    assert s.disks == ["/dev/sdb"]
    assert s.port == 8910
    # an empty variable still wins: no disk restriction
    assert Settings.from_env({"VSNAP_STATE": str(tmp_path), "VSNAP_DISKS": ""}).disks == []


@pytest.mark.parametrize("value, expected", [
    ("/dev/sda,/dev/sdb", ["/dev/sda", "/dev/sdb"]),
    ("/dev/sda /dev/sdb", ["/dev/sda", "/dev/sdb"]),
    (" /dev/sda ,, /dev/sd[c-e]\t/dev/loop* ", ["/dev/sda", "/dev/sd[c-e]", "/dev/loop*"]),
    (",", []),
])
def test_disk_list_splitting(tmp_path, value, expected):
    assert Settings.from_env({"VSNAP_STATE": str(tmp_path), "VSNAP_DISKS": value}).disks == expected


def test_typed_values_from_environment(tmp_path):
    s = Settings.from_env({
        "VSNAP_STATE": str(tmp_path), "VSNAP_AUTH_FAIL_LIMIT": "3", "VSNAP_AUTH_FAIL_WINDOW": "5.5",
        "VSNAP_AUTH_CACHE_SECONDS": "0", "VSNAP_COMMAND_TIMEOUT": "30", "VSNAP_GROUP": "admins",
        "VSNAP_SSH_PORT": "8932"})
    assert (s.auth_fail_limit, s.auth_fail_window, s.auth_cache_seconds) == (3, 5.5, 0.0)
    assert s.command_timeout == 30.0 and s.admin_group == "admins" and s.ssh_port == 8932


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True),
    ("0", False), ("no", False), ("", False), ("on", False),
])
def test_trusted_proxy(tmp_path, value, expected):
    s = Settings.from_env({"VSNAP_STATE": str(tmp_path), "VSNAP_TRUSTED_PROXY": value})
    assert s.trusted_proxy is expected


def test_settings_are_frozen(tmp_path):
    s = Settings(state_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1
