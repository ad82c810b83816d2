"""Network interfaces and their addresses, from `ip -j addr`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .runner import Runner


@dataclass
class Interface:
    name: str
    hw_addr: str | None  # colon-free lower-case MAC, None when the link has none (or all zero)
    ip4_addrs: list[str] = field(default_factory=list)
    ip6_addrs: list[str] = field(default_factory=list)
    loopback: bool = False  # the packet filter never restricts it (the appliance's own tools use it)


def parse_ip_addr(text: str) -> list[Interface]:
    interfaces = []
    for link in json.loads(text or "[]"):
        mac = (link.get("address") or "").replace(":", "").lower()
        if not mac or set(mac) == {"0"} or link.get("link_type") not in (None, "ether", "infiniband"):
            mac = None
        iface = Interface(name=link["ifname"], hw_addr=mac,
                          loopback=link.get("link_type") == "loopback" or "LOOPBACK" in (link.get("flags") or []))
        for addr in link.get("addr_info") or []:
            if addr.get("family") == "inet":
                iface.ip4_addrs.append(addr["local"])
            elif addr.get("family") == "inet6":
                iface.ip6_addrs.append(addr["local"])
        interfaces.append(iface)
    return interfaces


class NetworkDriver:
    def __init__(self, runner: Runner):
        self.runner = runner

    def interfaces(self) -> list[Interface]:
        return parse_ip_addr(self.runner.run(["ip", "-j", "addr", "show"]).stdout)
