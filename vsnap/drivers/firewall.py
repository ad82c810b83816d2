"""The packet filter that makes an interface's services take effect: one nftables table of the
appliance's own (`table inet <name>`), replaced whole and atomically with `nft -f -`.

Its one chain hooks input and accepts by default. Loopback comes first and is always accepted
(the appliance's own tools and the local CLI talk to its servers over it). Then, for each
interface that does not carry a service, new connections to that service's ports are refused
fast (a TCP reset, an ICMP port-unreachable for UDP), both when they arrive on that interface
and when they are addressed to one of its addresses. Only new connections: an established one
(the admin's own API request that removed `mgmt`) is not cut.

The script is built from validated interface names, parsed addresses and integer ports only.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

from .runner import CommandError, CommandNotFound, CommandTimeout, Runner

# What Linux accepts as an interface name, less what could not be quoted in nft's language.
IFNAME = re.compile(r"^[A-Za-z0-9_.:+-]{1,15}$")
# Programs of the NFS server whose ports rpcbind hands out (nfs, mountd, nlockmgr, status, nfs_acl).
NFS_RPC_PROGRAMS = {100003, 100005, 100021, 100024, 100227}


class FirewallError(Exception):
    """The packet filter could not be read or changed."""


def table_name(state_dir: Path) -> str:
    """The appliance's table: its state directory's name, in nft's identifier alphabet
    (/var/lib/vsnap -> vsnap, /var/lib/vsnap-test-b -> vsnap_test_b)."""
    name = re.sub(r"[^a-z0-9_]", "_", Path(state_dir).name.lower()) or "vsnap"
    return name if name[0].isalpha() else f"vsnap_{name}"


@dataclass(frozen=True)
class Ports:
    tcp: tuple[int, ...] = ()
    udp: tuple[int, ...] = ()


@dataclass
class Restriction:
    """An interface and the services it does not carry, with their ports."""
    name: str
    ip4_addrs: list[str] = field(default_factory=list)
    ip6_addrs: list[str] = field(default_factory=list)
    blocked: dict[str, Ports] = field(default_factory=dict)  # service -> its ports


def _port_set(ports) -> str:
    values = sorted({int(p) for p in ports})
    for p in values:
        if not 0 < p < 65536:
            raise ValueError(f"not a port: {p}")
    return "{ " + ", ".join(map(str, values)) + " }"


def _addresses(addrs, version: int) -> list[str]:
    """The addresses a packet for this interface is sent to, parsed (anything else raises);
    loopback and IPv6 link-local addresses are left out (loopback is never filtered, and a
    link-local address is the same on several links, so it would restrict them all)."""
    result = []
    for text in addrs:
        addr = ipaddress.ip_address(text)
        if addr.version != version:
            raise ValueError(f"not an IPv{version} address: {text}")
        if addr.is_loopback or (version == 6 and addr.is_link_local):
            continue
        result.append(str(addr))
    return sorted(set(result), key=ipaddress.ip_address)


def render(table: str, restrictions: list[Restriction]) -> str:
    """The whole nft script that makes the table what `restrictions` say: created or replaced
    atomically (the "table; delete table; table {...}" idiom works whether or not it exists),
    and only deleted when nothing is restricted."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", table):
        raise ValueError(f"not a table name: {table!r}")
    head = [f"table inet {table}", f"delete table inet {table}"]
    rules = []
    for r in sorted(restrictions, key=lambda r: r.name):
        if not IFNAME.fullmatch(r.name):
            raise ValueError(f"not an interface name: {r.name!r}")
        ip4, ip6 = _addresses(r.ip4_addrs, 4), _addresses(r.ip6_addrs, 6)
        matches = [f'iifname "{r.name}"']
        if ip4:
            matches.append("ip daddr { " + ", ".join(ip4) + " }")
        if ip6:
            matches.append("ip6 daddr { " + ", ".join(ip6) + " }")
        for service in sorted(r.blocked):
            if not re.fullmatch(r"[a-z]+", service):
                raise ValueError(f"not a service name: {service!r}")
            ports = r.blocked[service]
            comment = f'comment "{r.name}: no {service}"'
            for match in matches:
                if ports.tcp:
                    rules.append(f"{match} tcp dport {_port_set(ports.tcp)} ct state new "
                                 f"reject with tcp reset {comment}")
                if ports.udp:
                    rules.append(f"{match} udp dport {_port_set(ports.udp)} ct state new reject {comment}")
    if not rules:
        return "\n".join(head) + "\n"
    body = [f"table inet {table} {{",
            "\tchain input {",
            "\t\ttype filter hook input priority filter; policy accept;",
            '\t\tiifname "lo" accept',
            *(f"\t\t{rule}" for rule in rules),
            "\t}",
            "}"]
    return "\n".join(head + body) + "\n"


def parse_rpcinfo(text: str, programs: Container[int] = NFS_RPC_PROGRAMS) -> Ports:
    """The ports `rpcinfo -p` lists for `programs`."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].isdigit() or not fields[3].isdigit():
            continue
        if int(fields[0]) in programs and 0 < int(fields[3]) < 65536:
            {"tcp": tcp, "udp": udp}.get(fields[2], set()).add(int(fields[3]))
    return Ports(tuple(sorted(tcp)), tuple(sorted(udp)))


def smb_conf_ports(path: Path) -> list[int]:
    """The ports an smb.conf's `smb ports` names (none when it says nothing or is unreadable)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    ports = []
    for m in re.finditer(r"^\s*smb\s+ports\s*=\s*(.+)$", text, re.M | re.I):
        ports += [int(p) for p in re.split(r"[\s,]+", m.group(1).strip()) if p.isdigit() and 0 < int(p) < 65536]
    return ports


class FirewallDriver:
    """nft, for the one table of this appliance."""

    def __init__(self, runner: Runner, table: str, record: Path | None = None, timeout: float = 30.0):
        self.runner = runner
        self.table = table
        self.record = record  # the script last applied, kept for the next check (and for people)
        self.timeout = timeout

    def available(self) -> bool:
        return shutil.which("nft") is not None

    def apply(self, script: str) -> None:
        try:
            self.runner.run(["nft", "-f", "-"], input=script, timeout=self.timeout, changes=False)
        except CommandNotFound as exc:
            raise FirewallError("nft is not installed") from exc
        except CommandError as exc:
            raise FirewallError(exc.reason) from exc
        except CommandTimeout as exc:
            raise FirewallError(str(exc)) from exc
        if self.record is not None:
            try:
                tmp = self.record.with_name(self.record.name + ".tmp")
                tmp.write_text(script)
                tmp.replace(self.record)
            except OSError:
                pass  # the next check applies it again: no harm

    def applied(self) -> str | None:
        """The script last applied (by any process of this appliance), if known."""
        try:
            return self.record.read_text() if self.record is not None else None
        except OSError:
            return None

    def present(self) -> bool:
        """Whether the kernel has the table (gone after a reboot, or an `nft flush ruleset`)."""
        try:
            result = self.runner.run(["nft", "list", "table", "inet", self.table], check=False,
                                     timeout=self.timeout, changes=False)
        except CommandNotFound as exc:
            raise FirewallError("nft is not installed") from exc
        except CommandTimeout as exc:
            raise FirewallError(str(exc)) from exc
        return result.returncode == 0

    def rpc_ports(self) -> Ports:
        """The NFS server's RPC ports that rpcbind reports (none when it does not answer)."""
        try:
            result = self.runner.run(["rpcinfo", "-p", "127.0.0.1"], check=False, timeout=10, changes=False)
        except (CommandNotFound, CommandTimeout, OSError):
            return Ports()
        return parse_rpcinfo(result.stdout) if result.returncode == 0 else Ports()
