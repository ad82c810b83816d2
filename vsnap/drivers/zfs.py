"""ZFS through the zpool/zfs commands: OpenZFS in production, zfs-fuse in the lab.

Capabilities differ (zfs-fuse has no zvols, no -p exact sizes); they are probed once here so
callers never branch on the implementation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .runner import CommandError, CommandNotFound, Runner

# Section headers of `zpool status` and the role of the devices under them.
SECTION_NAMES = {"logs": "log", "cache": "cache", "spares": "spare", "special": "special",
                 "dedup": "dedup"}
ROLES = ("data", "log", "cache", "spare", "special", "dedup")


@dataclass
class VdevNode:
    name: str
    state: str | None
    children: list["VdevNode"] = field(default_factory=list)

    def leaves(self) -> list["VdevNode"]:
        if not self.children:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]


@dataclass
class PoolStatus:
    name: str
    state: str | None
    data: list[VdevNode] = field(default_factory=list)  # top-level data vdevs
    log: list[VdevNode] = field(default_factory=list)
    cache: list[VdevNode] = field(default_factory=list)
    spare: list[VdevNode] = field(default_factory=list)
    special: list[VdevNode] = field(default_factory=list)  # OpenZFS allocation classes
    dedup: list[VdevNode] = field(default_factory=list)

    def device_roles(self) -> dict[str, str]:
        """Leaf device path -> its role in this pool (one of ROLES)."""
        roles = {}
        for role in ROLES:
            for top in getattr(self, role):
                for leaf in top.leaves():
                    roles[device_path(leaf.name)] = role
        return roles


def device_path(name: str) -> str:
    """zpool status shows devices either by full path or by the name under /dev."""
    return name if name.startswith("/") else f"/dev/{name}"


def parse_zpool_status(text: str) -> list[PoolStatus]:
    pools: list[PoolStatus] = []
    current: PoolStatus | None = None
    in_config = False
    stack: list[tuple[int, VdevNode]] = []
    section = "data"
    for raw in text.splitlines():
        line = raw.expandtabs(8)
        stripped = line.strip()
        header = re.match(r"^\s*pool:\s*(\S+)", line)
        if header:
            current = PoolStatus(name=header.group(1), state=None)
            pools.append(current)
            in_config = False
            continue
        if current is None:
            continue
        state = re.match(r"^\s*state:\s*(\S+)", line)
        if state and not in_config:
            current.state = state.group(1)
            continue
        if stripped.startswith("NAME") and "STATE" in stripped:
            in_config, stack, section = True, [], "data"
            continue
        if not in_config:
            continue
        if not stripped:
            continue
        if re.match(r"^\S", line) and ":" in stripped:  # "errors: ..." ends the config block
            in_config = False
            continue
        indent = len(line) - len(line.lstrip(" "))
        parts = stripped.split()
        name, node_state = parts[0], (parts[1] if len(parts) > 1 else None)
        if not stack and name == current.name:  # the pool's own line
            stack = [(indent, VdevNode(name, node_state))]
            section = "data"
            continue
        if name in SECTION_NAMES and len(parts) == 1:
            section = SECTION_NAMES[name]
            stack = [(indent, VdevNode(name, None))]
            continue
        node = VdevNode(name, node_state)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if len(stack) <= 1:  # directly under the pool or a section: a top-level vdev
            getattr(current, section).append(node)
        else:
            stack[-1][1].children.append(node)
        stack.append((indent, node))
    return pools


# Pool states a vdev label records (module/zfs/spa.c: pool_state_t).
LABEL_ACTIVE, LABEL_EXPORTED, LABEL_DESTROYED, LABEL_SPARE, LABEL_L2CACHE = 0, 1, 2, 3, 4


@dataclass
class Label:
    """What the first readable ZFS label on a device says."""

    state: int
    pool: str | None

    @property
    def reusable(self) -> bool:
        """A destroyed pool's disk, or a spare/cache label with no imported pool claiming it,
        holds nothing a pool still needs; an active or exported pool's disk does."""
        return self.state in (LABEL_DESTROYED, LABEL_SPARE, LABEL_L2CACHE)


def parse_zdb_label(text: str) -> Label | None:
    state = pool = None
    for line in text.splitlines():
        if re.match(r"^-*\s*LABEL [1-9]", line.strip()):
            break  # the first label is enough
        found = re.match(r"^    (name|state): (.+)$", line)  # top-level keys only
        if found:
            key, value = found.groups()
            if key == "name" and pool is None:
                pool = value.strip().strip("'")
            elif key == "state" and state is None and value.strip().isdigit():
                state = int(value)
    return Label(state, pool) if state is not None else None


class ZfsDriver:
    def __init__(self, runner: Runner):
        self.runner = runner
        self._status_full_paths: bool | None = None  # OpenZFS has `zpool status -P`; zfs-fuse not

    def version(self) -> str | None:
        """The running ZFS's version: OpenZFS's kernel module, or the zfs-fuse daemon's package."""
        try:
            out = self.runner.run(["zfs", "version"], check=False, timeout=15)
        except CommandNotFound:
            return None
        lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
        if out.returncode == 0 and lines:
            kmod = [l for l in lines if l.startswith("zfs-kmod-")]
            return (kmod[0] if kmod else lines[0]).removeprefix("zfs-kmod-").removeprefix("zfs-")
        if not self.available():
            return None
        pkg = self.runner.run(["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"], check=False)
        return f"zfs-fuse {pkg.stdout.strip()}" if pkg.returncode == 0 and pkg.stdout.strip() else "zfs-fuse"

    def available(self) -> bool:
        try:
            return self.runner.run(["zpool", "list", "-H", "-o", "name"], check=False,
                                   timeout=30).returncode == 0
        except CommandNotFound:
            return False

    def pool_status(self, pool: str | None = None) -> list[PoolStatus]:
        names = [pool] if pool else []
        if self._status_full_paths is not False:
            out = self.runner.run(["zpool", "status", "-P", *names], check=False)
            if "invalid option" not in out.stderr:
                self._status_full_paths = True
                return self._parse_status(out)
            self._status_full_paths = False
        return self._parse_status(self.runner.run(["zpool", "status", *names], check=False))

    @staticmethod
    def _parse_status(out) -> list[PoolStatus]:
        if out.returncode != 0:
            if "no such pool" in out.stderr:
                return []
            raise CommandError(out.argv, out.returncode, out.stdout, out.stderr)
        return parse_zpool_status(out.stdout)

    def label(self, device: str) -> Label | None:
        """The ZFS label on a device, if any (`zdb -l`: works for pools not imported here)."""
        out = self.runner.run(["zdb", "-l", device], check=False, timeout=30)
        return parse_zdb_label(out.stdout)
