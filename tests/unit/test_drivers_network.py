"""parse_ip_addr over realistic `ip -j addr show` output."""
from __future__ import annotations

import json

from vsnap.drivers.network import NetworkDriver, parse_ip_addr

IP_J_ADDR = json.dumps([
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
     "qdisc": "noqueue", "operstate": "UNKNOWN", "group": "default", "txqlen": 1000,
     "link_type": "loopback", "address": "00:00:00:00:00:00", "broadcast": "00:00:00:00:00:00",
     "addr_info": [
         {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host", "label": "lo",
          "valid_life_time": 4294967295, "preferred_life_time": 4294967295},
         {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host",
          "valid_life_time": 4294967295, "preferred_life_time": 4294967295}]},
    {"ifindex": 2, "ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "mtu": 1500, "qdisc": "fq_codel", "operstate": "UP", "group": "default", "txqlen": 1000,
     "link_type": "ether", "address": "52:54:00:AB:cd:01", "broadcast": "ff:ff:ff:ff:ff:ff",
     "addr_info": [
         {"family": "inet", "local": "192.168.122.10", "prefixlen": 24,
          "broadcast": "192.168.122.255", "scope": "global", "dynamic": True, "label": "eth0",
          "valid_life_time": 3412, "preferred_life_time": 3412},
         {"family": "inet", "local": "10.0.0.5", "prefixlen": 8, "scope": "global",
          "secondary": True, "label": "eth0:1", "valid_life_time": 4294967295,
          "preferred_life_time": 4294967295},
         {"family": "inet6", "local": "2001:db8::10", "prefixlen": 64, "scope": "global",
          "valid_life_time": 4294967295, "preferred_life_time": 4294967295},
         {"family": "inet6", "local": "fe80::5054:ff:feab:cd01", "prefixlen": 64, "scope": "link",
          "valid_life_time": 4294967295, "preferred_life_time": 4294967295}]},
    {"ifindex": 3, "ifname": "dummy0", "flags": ["BROADCAST", "NOARP"], "mtu": 1500,
     "link_type": "ether", "address": "00:00:00:00:00:00", "broadcast": "ff:ff:ff:ff:ff:ff",
     "addr_info": []},
    {"ifindex": 4, "ifname": "tun0", "flags": ["POINTOPOINT", "UP"], "mtu": 1500,
     "link_type": "none",
     "addr_info": [{"family": "inet", "local": "10.8.0.1", "prefixlen": 24, "scope": "global"}]},
    {"ifindex": 5, "ifname": "eth1", "flags": ["BROADCAST", "MULTICAST"], "mtu": 1500,
     "link_type": "ether", "address": "52:54:00:12:34:56"},  # down, no addr_info at all
])


def test_parse_ip_addr():
    ifaces = {i.name: i for i in parse_ip_addr(IP_J_ADDR)}
    assert list(ifaces) == ["lo", "eth0", "dummy0", "tun0", "eth1"]

    lo = ifaces["lo"]
    assert lo.hw_addr is None
    assert lo.ip4_addrs == ["127.0.0.1"] and lo.ip6_addrs == ["::1"]

    eth0 = ifaces["eth0"]
    assert eth0.hw_addr == "525400abcd01"  # colon-free, lower case
    assert eth0.ip4_addrs == ["192.168.122.10", "10.0.0.5"]
    assert eth0.ip6_addrs == ["2001:db8::10", "fe80::5054:ff:feab:cd01"]

    assert ifaces["dummy0"].hw_addr is None  # all-zero MAC
    assert ifaces["dummy0"].ip4_addrs == [] and ifaces["dummy0"].ip6_addrs == []
    assert ifaces["tun0"].hw_addr is None and ifaces["tun0"].ip4_addrs == ["10.8.0.1"]
    assert ifaces["eth1"].hw_addr == "525400123456" and ifaces["eth1"].ip4_addrs == []
    # loopback is told apart (the packet filter never restricts it)
    assert [name for name, i in ifaces.items() if i.loopback] == ["lo"]


def test_parse_ip_addr_empty():
    assert parse_ip_addr("") == []
    assert parse_ip_addr("[]") == []


def test_driver_runs_ip_json(fake_runner):
    fake_runner.on(["ip", "-j", "addr", "show"], stdout=IP_J_ADDR)
    assert [i.name for i in NetworkDriver(fake_runner).interfaces()][:2] == ["lo", "eth0"]
    assert fake_runner.argvs() == [["ip", "-j", "addr", "show"]]
