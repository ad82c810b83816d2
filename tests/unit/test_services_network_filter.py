"""Interfaces' services take effect through the packet filter: what NetworkService applies on
an update, at start-up and in the worker's checks, and what happens when nft fails or is
missing (fake runner, real SQLite store)."""
from __future__ import annotations

import logging

import pytest
from conftest import FakeRunner

from vsnap.drivers.firewall import FirewallDriver, Ports
from vsnap.drivers.network import Interface
from vsnap.errors import ServiceUnavailableError, ValidationError
from vsnap.services.locking import StorageLock
from vsnap.services.network import SERVICES, NetworkService, ServicePorts
from vsnap.store.db import Store
from vsnap.store.models import Base, NetworkServices

RPCINFO = """\
   program vers proto   port  service
    100000    4   tcp    111  portmapper
    100003    3   tcp   2049  nfs
    100005    3   tcp  38093  mountd
    100005    3   udp  50759  mountd
"""


class Interfaces:
    def __init__(self, interfaces):
        self.now = interfaces

    def interfaces(self):
        return [Interface(i.name, i.hw_addr, list(i.ip4_addrs), list(i.ip6_addrs), i.loopback) for i in self.now]


LO = Interface("lo", None, ["127.0.0.1"], ["::1"], loopback=True)
ETH0 = Interface("eth0", "525400abcd01", ["192.168.122.10"], ["fe80::5054:ff:feab:cd01"])
ETH1 = Interface("eth1", "525400abcd02", ["10.0.0.5"], ["2001:db8::5"])


class Nft(FakeRunner):
    """nft and rpcinfo as the kernel would answer; `table` is what nft holds now."""

    def __init__(self, fail: str | None = None):
        super().__init__()
        self.table: str | None = None
        self.fail = fail
        self.on(["rpcinfo"], stdout=RPCINFO)

    def run(self, argv, *, check=True, input=None, timeout=None, env=None, changes=None):
        if argv[:3] == ["nft", "-f", "-"]:
            self.calls.append({"argv": list(argv), "check": check, "input": input, "timeout": timeout})
            if self.fail:
                from vsnap.drivers.runner import CommandError
                raise CommandError(list(argv), 1, "", self.fail)
            self.table = input if "chain input" in input else None
            from vsnap.drivers.runner import Result
            return Result(list(argv), 0, "", "")
        if argv[:3] == ["nft", "list", "table"]:
            self.calls.append({"argv": list(argv), "check": check, "input": input, "timeout": timeout})
            from vsnap.drivers.runner import Result
            return Result(list(argv), 0 if self.table else 1, self.table or "", "" if self.table else "No such file")
        return super().run(argv, check=check, input=input, timeout=timeout, env=env, changes=changes)

    def applied_scripts(self) -> list[str]:
        return [c["input"] for c in self.calls if c["argv"][:3] == ["nft", "-f", "-"]]


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'vsnap.db'}")
    Base.metadata.create_all(store.engine)
    yield store
    store.engine.dispose()


@pytest.fixture
def smb_conf(tmp_path):
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n    smb ports = 4445\n")
    return conf


def make(store, tmp_path, smb_conf, runner, interfaces=(LO, ETH0, ETH1), nft_installed=True, monkeypatch=None):
    firewall = FirewallDriver(runner, "vsnap_t", record=tmp_path / "network-filter.nft")
    firewall.available = lambda: nft_installed
    driver = Interfaces(list(interfaces))
    service = NetworkService(store, driver, firewall, ServicePorts(8910, smb_conf, firewall),
                             StorageLock(tmp_path / "network.lock"))
    return service, driver


def test_removed_services_are_refused_on_the_interface_and_its_addresses(store, tmp_path, smb_conf):
    nft = Nft()
    service, _ = make(store, tmp_path, smb_conf, nft)
    assert service.update("525400abcd02", ["mgmt", "repl"])["services"] == ["mgmt", "repl"]
    script = nft.table
    assert 'iifname "lo" accept' in script
    assert 'iifname "eth1" tcp dport { 111, 2049, 38093 } ct state new reject with tcp reset comment "eth1: no nfs"' \
        in script
    assert 'iifname "eth1" udp dport { 111, 2049, 50759 } ct state new reject comment "eth1: no nfs"' in script
    assert 'ip daddr { 10.0.0.5 } tcp dport { 139, 445, 4445 } ct state new reject with tcp reset ' \
           'comment "eth1: no smb"' in script
    assert 'ip6 daddr { 2001:db8::5 } tcp dport { 3260 } ct state new reject with tcp reset ' \
           'comment "eth1: no iscsi"' in script
    assert "no mgmt" not in script and "eth0" not in script and "8910" not in script
    # mgmt is the API's port
    service.update("525400abcd02", [])
    assert 'iifname "eth1" tcp dport { 8910 } ct state new reject with tcp reset comment "eth1: no mgmt"' in nft.table
    # all services back: the table goes
    service.update("525400abcd02", ["all"])
    assert nft.table is None
    assert nft.applied_scripts()[-1] == "table inet vsnap_t\ndelete table inet vsnap_t\n"


def test_repl_alone_needs_no_rule_and_nfs_ports_are_asked_only_when_needed(store, tmp_path, smb_conf):
    nft = Nft()
    service, _ = make(store, tmp_path, smb_conf, nft)
    service.update("525400abcd01", ["mgmt", "nfs", "smb", "iscsi"])
    assert nft.table is None
    assert not any(c["argv"][0] == "rpcinfo" for c in nft.calls)
    service.update("525400abcd01", ["mgmt", "nfs", "smb"])
    assert "no iscsi" in nft.table and not any(c["argv"][0] == "rpcinfo" for c in nft.calls)


def test_loopback_is_never_restricted(store, tmp_path, smb_conf):
    nft = Nft()
    service, _ = make(store, tmp_path, smb_conf, nft)
    assert service.update("lo", [])["services"] == []
    assert nft.table is None


def test_a_failed_nft_changes_nothing(store, tmp_path, smb_conf):
    nft = Nft(fail="Error: Could not process rule: Operation not permitted")
    service, _ = make(store, tmp_path, smb_conf, nft)
    with pytest.raises(ServiceUnavailableError) as info:
        service.update("525400abcd01", ["repl"])
    assert "packet filter could not be changed" in info.value.message
    assert "Operation not permitted" in info.value.message
    assert service.get("525400abcd01")["services"] == list(SERVICES)
    with store.session() as s:
        assert s.query(NetworkServices).count() == 0


def test_without_nft_a_restriction_is_refused_and_nothing_stored(store, tmp_path, smb_conf, caplog):
    nft = Nft()
    service, _ = make(store, tmp_path, smb_conf, nft, nft_installed=False)
    with pytest.raises(ServiceUnavailableError) as info:
        service.update("525400abcd01", ["mgmt", "repl"])
    assert "packet filter is unavailable" in info.value.message and "nftables" in info.value.message
    assert service.get("525400abcd01")["services"] == list(SERVICES)
    # what needs no filtering is still stored: repl alone, loopback
    assert service.update("525400abcd01", ["mgmt", "nfs", "smb", "iscsi"])["services"] == \
        ["mgmt", "nfs", "smb", "iscsi"]
    assert service.update("lo", [])["services"] == []
    assert nft.applied_scripts() == []
    with caplog.at_level(logging.WARNING, logger="vsnap.services.network"):
        assert service.enforce(startup=True) is False
    assert "nft is not installed" in caplog.text


def test_an_oddly_named_interface_cannot_be_restricted(store, tmp_path, smb_conf):
    nft = Nft()
    odd = Interface("eth 0", "525400abcd09", ["10.9.0.1"], [])
    service, _ = make(store, tmp_path, smb_conf, nft, interfaces=(LO, odd))
    with pytest.raises(ValidationError):
        service.update("525400abcd09", ["repl"])
    assert service.update("525400abcd09", ["all"])["services"] == list(SERVICES)


def test_startup_applies_always_and_the_worker_only_on_a_change(store, tmp_path, smb_conf, caplog):
    nft = Nft()
    service, driver = make(store, tmp_path, smb_conf, nft)
    service.update("525400abcd02", ["nfs", "repl"])
    applied = len(nft.applied_scripts())
    assert service.enforce(startup=True) is True  # a restart: applied again, whatever was recorded
    assert len(nft.applied_scripts()) == applied + 1
    with caplog.at_level(logging.DEBUG, logger="vsnap.services.network"):
        assert service.enforce() is False  # nothing changed: no nft -f
    assert len(nft.applied_scripts()) == applied + 1
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    # the table was deleted behind the appliance's back (a reboot, nft flush ruleset)
    nft.table = None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vsnap.services.network"):
        assert service.enforce() is True
    assert "eth1: no mgmt, smb, iscsi" in caplog.text
    assert "10.0.0.5" in nft.table
    # an address changed
    driver.now = [LO, ETH0, Interface("eth1", "525400abcd02", ["10.0.0.7"], [])]
    assert service.enforce() is True
    assert "10.0.0.7" in nft.table and "10.0.0.5" not in nft.table
    assert service.enforce() is False


def test_another_process_applied_it_already(store, tmp_path, smb_conf):
    """The worker runs in one of the server's processes, the update in any: what the update
    applied is recorded in the state directory, and the worker's check finds it unchanged."""
    nft = Nft()
    api, _ = make(store, tmp_path, smb_conf, nft)
    worker, _ = make(store, tmp_path, smb_conf, nft)
    api.update("525400abcd01", ["repl"])
    count = len(nft.applied_scripts())
    assert worker.enforce() is False
    assert len(nft.applied_scripts()) == count


def test_an_absent_interface_stays_restricted_by_name(store, tmp_path, smb_conf):
    nft = Nft()
    service, driver = make(store, tmp_path, smb_conf, nft)
    service.update("525400abcd02", ["mgmt"])
    driver.now = [LO, ETH0]  # eth1 unplugged
    service.enforce()
    assert 'iifname "eth1" tcp dport { 3260 }' in nft.table and "10.0.0.5" not in nft.table


def test_worker_reports_a_failing_nft_once(store, tmp_path, smb_conf, caplog):
    nft = Nft()
    service, _ = make(store, tmp_path, smb_conf, nft)
    service.update("525400abcd02", ["repl"])
    nft.table, nft.fail = None, "Error: Could not process rule: No such file or directory"
    with caplog.at_level(logging.ERROR, logger="vsnap.services.network"):
        assert service.enforce() is False
        assert service.enforce() is False
    assert caplog.text.count("could not be applied") == 1


def test_service_ports(smb_conf):
    class Fw:
        def rpc_ports(self):
            return Ports((38093,), (50759,))
    ports = ServicePorts(8900, smb_conf, Fw())
    assert ports("mgmt") == Ports((8900,))
    assert ports("nfs") == Ports((111, 2049, 38093), (111, 2049, 50759))
    assert ports("smb") == Ports((139, 445, 4445))
    assert ports("iscsi") == Ports((3260,))
