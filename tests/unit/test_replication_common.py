"""What the parts of replication share (common.py): validate_address / validate_port, and
PartnerLink over a FakeRunner."""
from __future__ import annotations

import json

import pytest

from vsnap.drivers.runner import CommandTimeout
from vsnap.errors import ValidationError
from vsnap.services.replication import PartnerLink, RemoteError, validate_address, validate_port
from vsnap.store.models import Partner

from replication_support import P1, R1, FakeSsh

# =============================================================================================
# validate_address / validate_port
# =============================================================================================

@pytest.mark.parametrize("value, expected", [
    ("10.0.0.5", "10.0.0.5"), (" 10.0.0.5 ", "10.0.0.5"), ("partner.example.com", "partner.example.com"),
    ("Partner.Example.COM", "partner.example.com"), ("vsnap-b", "vsnap-b"), ("::1", "::1"),
    ("fd00:0:0::5", "fd00::5"),
])
def test_validate_address_accepts(value, expected):
    assert validate_address(value, "remote_addr") == expected


@pytest.mark.parametrize("value", [
    "-oProxyCommand=x", "-oProxyCommand=touch /tmp/x", "-p", "-", "--", "a b", "", " ", "\t", "all", "ALL",
    "10.0.0.0/24", "fe80::1/64", "fe80::1%eth0", "host;id", "$(id)", "`id`", "x\ny", "user@host",
    "host:22", "[::1]", "a" * 300, "-host", "host-", "1.2.3", "999.1.1.1", None, 5, True, b"10.0.0.1",
    ["10.0.0.1"],
])
def test_validate_address_refuses(value):
    with pytest.raises(ValidationError, match="remote_addr|allowed_hosts"):
        validate_address(value, "remote_addr")


@pytest.mark.parametrize("value", ["-oProxyCommand=x", "a b", "", "fe80::1%eth0"])
def test_validate_address_error_names_the_field(value):
    with pytest.raises(ValidationError) as info:
        validate_address(value, "remote_addr")
    assert "remote_addr" in info.value.message and "allowed_hosts" not in info.value.message


@pytest.mark.parametrize("value", [1, 22, 8922, 65535])
def test_validate_port_accepts(value):
    assert validate_port(value, "port") == value


@pytest.mark.parametrize("value", [0, 65536, -1, True, False, "22", "x", 22.0, None, [22]])
def test_validate_port_refuses(value):
    with pytest.raises(ValidationError, match="port"):
        validate_port(value, "port")


# =============================================================================================
# PartnerLink over a FakeRunner
# =============================================================================================

@pytest.fixture
def link(fake_runner):
    return PartnerLink(FakeSsh(), fake_runner, timeout=33), fake_runner


PARTNER = Partner(id=P1, address="10.0.0.2", ssh_port=8922)


def test_link_call(link):
    lk, runner = link
    runner.on(["ssh-fake"], stdout=json.dumps({"ok": True}))
    assert lk.call(PARTNER, "snapshots", R1, body={"x": 1}) == {"ok": True}
    (call,) = runner.calls
    assert call["argv"] == ["ssh-fake", P1, "10.0.0.2", "8922", "--", "snapshots", R1]
    assert json.loads(call["input"]) == {"x": 1}
    assert call["check"] is False and call["timeout"] == 33


def test_link_call_to_another_address(link):
    lk, runner = link
    runner.on(["ssh-fake"], stdout="{}")
    lk.call(PARTNER, "info", address="10.5.0.2")
    assert runner.calls[0]["argv"][2] == "10.5.0.2"
    assert json.loads(runner.calls[0]["input"]) == {}


@pytest.mark.parametrize("stderr, reason", [
    ("ssh: connect to host 10.0.0.2 port 8922: Connection refused\n", "Connection refused"),
    ("Warning\nHost key verification failed.\n", "Host key verification failed."),
    ("", "ssh failed"),
])
def test_link_ssh_failure_is_unreachable(link, stderr, reason):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=255, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert info.value.unreachable is True and reason in str(info.value)


def test_link_timeout_is_unreachable(link):
    lk, runner = link
    runner.on(["ssh-fake"], raises=CommandTimeout(["ssh-fake"], 33))
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert info.value.unreachable is True and "33" in str(info.value)


@pytest.mark.parametrize("rc, stdout, stderr, text", [
    (1, json.dumps({"error": "Relationship x not found", "type": "NotFoundError"}), "", "not found"),
    (0, json.dumps({"error": "odd"}), "", "odd"),
    (1, "", "Traceback: boom\n", "Traceback: boom"),
    (0, "not json", "", "not json"),
    (3, "", "", "exit status 3"),
])
def test_link_refusals_are_not_unreachable(link, rc, stdout, stderr, text):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=rc, stdout=stdout, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "delete-relationship", R1, "0")
    assert info.value.unreachable is False and text in str(info.value)


@pytest.mark.parametrize("stderr, untrusted", [
    ("root@10.0.0.2: Permission denied (publickey).\n", True),
    ("Warning\nHost key verification failed.\n", True),
    ("ssh: connect to host 10.0.0.2 port 8922: Connection refused\n", False),
])
def test_link_tells_refused_trust_from_no_connection(link, stderr, untrusted):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=255, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert (info.value.untrusted, info.value.unreachable, info.value.refused) == (untrusted, True, False)
    assert ("no longer accepts this appliance" in str(info.value)) == untrusted


@pytest.mark.parametrize("stdout, unknown, refused", [
    (json.dumps({"error": "Relationship x not found", "type": "NotFoundError"}), True, False),
    (json.dumps({"error": "The replica volume has clones", "type": "ConflictError"}), False, True),
    # the partner's server stopped while answering: how the request ended there is not known
    (json.dumps({"error": "the appliance's server stopped while answering"}), False, False),
])
def test_link_tells_what_a_partner_answered(link, stdout, unknown, refused):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=1, stdout=stdout)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "delete-relationship", R1, "0")
    assert (info.value.unknown, info.value.refused, info.value.unreachable) == (unknown, refused, False)
    assert info.value.reason == json.loads(stdout)["error"]
