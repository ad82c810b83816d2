"""normalize_services and NetworkService over a fake driver and a real SQLite store."""
from __future__ import annotations

import pytest

from vsnap.drivers.network import Interface
from vsnap.errors import NotFoundError, ValidationError
from vsnap.services.network import SERVICES, NetworkService, normalize_services
from vsnap.store.db import Store
from vsnap.store.models import Base, NetworkServices


def test_services_canonical_order():
    assert SERVICES == ("mgmt", "nfs", "smb", "iscsi", "repl")


@pytest.mark.parametrize("given, expected", [
    (["all"], ["mgmt", "nfs", "smb", "iscsi", "repl"]),
    (["nfs", "all"], ["mgmt", "nfs", "smb", "iscsi", "repl"]),
    (["repl", "mgmt"], ["mgmt", "repl"]),
    (["nfs", "smb", "nfs", "smb"], ["nfs", "smb"]),
    (["iscsi"], ["iscsi"]),
    ([], []),
])
def test_normalize_services(given, expected):
    assert normalize_services(given) == expected


@pytest.mark.parametrize("given", [["bogus"], ["nfs", "NFS"], ["all", "ftp"], [""]])
def test_normalize_services_rejects_unknown(given):
    with pytest.raises(ValidationError) as info:
        normalize_services(given)
    assert "Unknown service" in info.value.message


class FakeNetworkDriver:
    def __init__(self, interfaces):
        self._interfaces = interfaces

    def interfaces(self):
        return [Interface(i.name, i.hw_addr, list(i.ip4_addrs), list(i.ip6_addrs))
                for i in self._interfaces]


INTERFACES = [
    Interface("lo", None, ["127.0.0.1"], ["::1"]),
    Interface("eth0", "525400abcd01", ["192.168.122.10"], ["fe80::5054:ff:feab:cd01"]),
    Interface("eth1", "525400abcd02", ["10.0.0.5", "10.0.0.6"], []),
    # a bond and its VLAN share one MAC: neither may be identified by it
    Interface("bond0", "0cc47a000001", ["172.16.0.2"], []),
    Interface("bond0.100", "0cc47a000001", ["172.16.100.2"], []),
]


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'vsnap.db'}"


def _store(url):
    store = Store(url)
    Base.metadata.create_all(store.engine)
    return store


@pytest.fixture
def store(db_url):
    store = _store(db_url)
    yield store
    store.engine.dispose()


@pytest.fixture
def service(store):
    return NetworkService(store, FakeNetworkDriver(INTERFACES))


def test_ids_are_unique_macs_else_names(service):
    listed = service.list()
    assert [(n["id"], n["name"]) for n in listed] == [
        ("lo", "lo"),
        ("525400abcd01", "eth0"),
        ("525400abcd02", "eth1"),
        ("bond0", "bond0"),
        ("bond0.100", "bond0.100"),
    ]
    assert listed[3]["hw_addr"] == "0cc47a000001"  # the MAC is still shown


def test_unconfigured_interfaces_carry_every_service(service):
    for net in service.list():
        assert net["services"] == list(SERVICES)
    eth0 = service.get("525400abcd01")
    assert eth0["ip4_addrs"] == ["192.168.122.10"]
    assert eth0["ip6_addrs"] == ["fe80::5054:ff:feab:cd01"]


def test_get_unknown_and_by_the_wrong_id(service):
    with pytest.raises(NotFoundError):
        service.get("deadbeef0000")
    with pytest.raises(NotFoundError):
        service.get("eth0")  # eth0 has a unique MAC: that is its id, not the name
    assert service.get("bond0")["name"] == "bond0"


def test_update_persists_and_another_service_sees_it(service, db_url):
    result = service.update("525400abcd01", ["nfs", "mgmt", "nfs"])
    assert result["services"] == ["mgmt", "nfs"]
    assert result["id"] == "525400abcd01"
    assert service.get("525400abcd01")["services"] == ["mgmt", "nfs"]

    other_store = _store(db_url)
    try:
        other = NetworkService(other_store, FakeNetworkDriver(INTERFACES))
        by_id = {n["id"]: n["services"] for n in other.list()}
        assert by_id["525400abcd01"] == ["mgmt", "nfs"]
        assert by_id["525400abcd02"] == list(SERVICES)  # untouched
        with other_store.session() as s:
            row = s.get(NetworkServices, "525400abcd01")
            assert (row.name, row.services) == ("eth0", ["mgmt", "nfs"])
            assert row.time_updated > 0
            assert s.query(NetworkServices).count() == 1
    finally:
        other_store.engine.dispose()


def test_update_again_replaces_services(service, store):
    service.update("bond0.100", ["all"])
    service.update("bond0.100", ["repl"])
    assert service.get("bond0.100")["services"] == ["repl"]
    assert service.get("bond0")["services"] == list(SERVICES)
    with store.session() as s:
        assert s.query(NetworkServices).count() == 1


def test_update_can_remove_every_service(service):
    assert service.update("lo", [])["services"] == []
    assert service.get("lo")["services"] == []


def test_update_rejects_unknown_service_and_persists_nothing(service, store):
    with pytest.raises(ValidationError):
        service.update("525400abcd01", ["nfs", "telnet"])
    with pytest.raises(NotFoundError):
        service.update("no-such-iface", ["nfs"])
    with store.session() as s:
        assert s.query(NetworkServices).count() == 0


def test_addresses_for(service):
    service.update("525400abcd02", ["mgmt"])
    service.update("bond0", ["repl", "nfs"])
    assert service.addresses_for("repl") == ["127.0.0.1", "192.168.122.10", "172.16.0.2",
                                             "172.16.100.2"]
    assert service.addresses_for("mgmt") == ["127.0.0.1", "192.168.122.10", "10.0.0.5",
                                             "10.0.0.6", "172.16.100.2"]


def test_restricted_interface_stays_restricted_when_a_vlan_shares_its_mac(store):
    before = [Interface("eth0", "525400abcd01", ["192.168.122.10"], [])]
    NetworkService(store, FakeNetworkDriver(before)).update("525400abcd01", ["nfs"])
    after = before + [Interface("eth0.100", "525400abcd01", ["10.100.0.1"], [])]
    eth0 = {n["name"]: n for n in NetworkService(store, FakeNetworkDriver(after)).list()}["eth0"]
    assert eth0["services"] == ["nfs"]
