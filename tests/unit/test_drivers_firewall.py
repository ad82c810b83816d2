"""The packet filter's nft script, rpcinfo and smb.conf parsing, and nft's errors (fake runner)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeRunner

from vsnap.drivers.firewall import (
    FirewallDriver,
    FirewallError,
    Ports,
    Restriction,
    parse_rpcinfo,
    render,
    smb_conf_ports,
    table_name,
)
from vsnap.drivers.runner import CommandNotFound, CommandTimeout


@pytest.mark.parametrize("state, table", [
    ("/var/lib/vsnap", "vsnap"), ("/var/lib/vsnap-test", "vsnap_test"), ("/var/lib/vsnap-test-b", "vsnap_test_b"),
    ("/var/lib/vsnap-dev-net", "vsnap_dev_net"), ("/srv/Vsnap.Prod", "vsnap_prod"), ("/srv/2nd", "vsnap_2nd"),
])
def test_table_name_from_the_state_dir(state, table):
    assert table_name(Path(state)) == table


def test_nothing_restricted_deletes_the_table_whether_or_not_it_exists():
    assert render("vsnap", []) == "table inet vsnap\ndelete table inet vsnap\n"
    # an interface that lost nothing has no rule either
    assert render("vsnap", [Restriction("eth0", ["10.0.0.1"], [], {})]) == render("vsnap", [])


def test_rules_per_interface_and_service():
    script = render("vsnap_test", [
        Restriction("eth1", ["10.0.0.6", "10.0.0.5"], ["fe80::1", "2001:db8::5", "::1"],
                    {"nfs": Ports((2049, 111, 38093), (111, 2049)), "mgmt": Ports((8900,))}),
        Restriction("eth0", [], [], {"iscsi": Ports((3260,))}),
    ])
    lines = script.splitlines()
    # replaced atomically: the table is declared (made if absent), deleted, made anew, in one script
    assert lines[:3] == ["table inet vsnap_test", "delete table inet vsnap_test", "table inet vsnap_test {"]
    assert "\t\ttype filter hook input priority filter; policy accept;" in lines
    rules = [line.strip() for line in lines[5:-2]]
    assert rules[0] == 'iifname "lo" accept'  # before any reject
    assert rules[1:] == [
        'iifname "eth0" tcp dport { 3260 } ct state new reject with tcp reset comment "eth0: no iscsi"',
        'iifname "eth1" tcp dport { 8900 } ct state new reject with tcp reset comment "eth1: no mgmt"',
        'ip daddr { 10.0.0.5, 10.0.0.6 } tcp dport { 8900 } ct state new reject with tcp reset comment "eth1: no mgmt"',
        'ip6 daddr { 2001:db8::5 } tcp dport { 8900 } ct state new reject with tcp reset comment "eth1: no mgmt"',
        'iifname "eth1" tcp dport { 111, 2049, 38093 } ct state new reject with tcp reset comment "eth1: no nfs"',
        'iifname "eth1" udp dport { 111, 2049 } ct state new reject comment "eth1: no nfs"',
        'ip daddr { 10.0.0.5, 10.0.0.6 } tcp dport { 111, 2049, 38093 } ct state new reject with tcp reset '
        'comment "eth1: no nfs"',
        'ip daddr { 10.0.0.5, 10.0.0.6 } udp dport { 111, 2049 } ct state new reject comment "eth1: no nfs"',
        'ip6 daddr { 2001:db8::5 } tcp dport { 111, 2049, 38093 } ct state new reject with tcp reset '
        'comment "eth1: no nfs"',
        'ip6 daddr { 2001:db8::5 } udp dport { 111, 2049 } ct state new reject comment "eth1: no nfs"',
    ]
    assert lines[-2:] == ["\t}", "}"] and script.endswith("}\n")


@pytest.mark.parametrize("restriction", [
    Restriction('eth0" accept; #', [], [], {"nfs": Ports((2049,))}),
    Restriction("eth0 x", [], [], {"nfs": Ports((2049,))}),
    Restriction("a-very-long-name-indeed", [], [], {"nfs": Ports((2049,))}),
    Restriction("eth0", ["10.0.0.1 } accept"], [], {"nfs": Ports((2049,))}),
    Restriction("eth0", ["2001:db8::1"], [], {"nfs": Ports((2049,))}),  # v6 in the v4 list
    Restriction("eth0", [], [], {"nfs": Ports((0,))}),
    Restriction("eth0", [], [], {"nfs": Ports((65536,))}),
    Restriction("eth0", [], [], {'nfs"': Ports((2049,))}),
])
def test_anything_but_names_addresses_and_ports_is_refused(restriction):
    with pytest.raises(ValueError):
        render("vsnap", [restriction])


def test_bad_table_name_is_refused():
    with pytest.raises(ValueError):
        render("vsnap; flush ruleset", [])


RPCINFO = """\
   program vers proto   port  service
    100000    4   tcp    111  portmapper
    100000    2   udp    111  portmapper
    100003    3   udp   2049  nfs
    100003    3   tcp   2049  nfs
    100005    1   udp  50759  mountd
    100005    3   tcp  38093  mountd
    100021    4   tcp  40001  nlockmgr
    100024    1   udp  40002  status
    100227    3   tcp   2049  nfs_acl
    100099    1   tcp  41000  other
"""


def test_rpcinfo_ports_of_the_nfs_programs():
    assert parse_rpcinfo(RPCINFO) == Ports(tcp=(2049, 38093, 40001), udp=(2049, 40002, 50759))
    assert parse_rpcinfo("") == Ports()


def test_rpc_ports_when_rpcbind_does_not_answer():
    runner = FakeRunner().on(["rpcinfo"], returncode=1, stderr="rpcinfo: can't contact portmapper")
    assert FirewallDriver(runner, "vsnap").rpc_ports() == Ports()
    runner = FakeRunner().on(["rpcinfo"], raises=CommandTimeout(["rpcinfo"], 10))
    assert FirewallDriver(runner, "vsnap").rpc_ports() == Ports()
    runner = FakeRunner().on(["rpcinfo"], stdout=RPCINFO)
    assert FirewallDriver(runner, "vsnap").rpc_ports().tcp == (2049, 38093, 40001)
    assert runner.argvs() == [["rpcinfo", "-p", "127.0.0.1"]]


def test_smb_conf_ports(tmp_path):
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n    interfaces = lo\n    smb ports = 4445 139\n    include = shares.conf\n")
    assert smb_conf_ports(conf) == [4445, 139]
    conf.write_text("[global]\n  SMB Ports = 4446,4447\n")
    assert smb_conf_ports(conf) == [4446, 4447]
    conf.write_text("[global]\n   workgroup = X\n")
    assert smb_conf_ports(conf) == []
    assert smb_conf_ports(tmp_path / "absent.conf") == []


def test_apply_feeds_the_script_to_nft_and_records_it(tmp_path):
    record = tmp_path / "network-filter.nft"
    runner = FakeRunner().on(["nft", "-f", "-"])
    driver = FirewallDriver(runner, "vsnap", record=record)
    assert driver.applied() is None
    script = render("vsnap", [Restriction("eth0", [], [], {"iscsi": Ports((3260,))})])
    driver.apply(script)
    assert runner.calls[0]["argv"] == ["nft", "-f", "-"] and runner.calls[0]["input"] == script
    assert driver.applied() == script == record.read_text()


def test_nft_errors_are_firewall_errors_and_nothing_is_recorded(tmp_path):
    record = tmp_path / "network-filter.nft"
    runner = FakeRunner().on(["nft", "-f", "-"], returncode=1,
                             stderr="Error: Could not process rule: Operation not permitted\n")
    driver = FirewallDriver(runner, "vsnap", record=record)
    with pytest.raises(FirewallError, match="Operation not permitted"):
        driver.apply("table inet vsnap\n")
    assert driver.applied() is None
    driver = FirewallDriver(FakeRunner().on(["nft"], raises=CommandNotFound(["nft"])), "vsnap")
    with pytest.raises(FirewallError, match="not installed"):
        driver.apply("table inet vsnap\n")
    with pytest.raises(FirewallError, match="not installed"):
        driver.present()
    driver = FirewallDriver(FakeRunner().on(["nft"], raises=CommandTimeout(["nft"], 30)), "vsnap")
    with pytest.raises(FirewallError, match="did not finish"):
        driver.apply("table inet vsnap\n")


def test_present_asks_for_the_table():
    runner = FakeRunner().on(["nft", "list", "table"], returncode=1,
                             stderr="Error: No such file or directory")
    assert FirewallDriver(runner, "vsnap_test").present() is False
    assert runner.argvs() == [["nft", "list", "table", "inet", "vsnap_test"]]
    assert FirewallDriver(FakeRunner().on(["nft", "list", "table"], stdout="table inet vsnap {}"),
                          "vsnap").present() is True
