"""ZFS through the zpool/zfs commands: OpenZFS in production, zfs-fuse in the lab.

Capabilities differ (zfs-fuse has no zvols, no -p exact sizes); they are probed once here so
callers never branch on the implementation.
"""
from __future__ import annotations

import builtins
import io
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .runner import NO_TIMEOUT, CommandError, CommandNotFound, Runner

# Section headers of `zpool status` and the role of the devices under them.
SECTION_NAMES = {"logs": "log", "cache": "cache", "spares": "spare", "special": "special",
                 "dedup": "dedup"}
ROLES = ("data", "log", "cache", "spare", "special", "dedup")

log = logging.getLogger(__name__)


@dataclass
class VdevNode:
    name: str
    state: str | None
    children: list["VdevNode"] = field(default_factory=list)
    # What ZFS says after the error counters: "cannot open", "was /dev/sdb", "currently in
    # use", "436M resilvered", "(resilvering)"...
    note: str | None = None

    @property
    def path(self) -> str:
        """The device as the pool view shows it: a path under /dev (or a file's path). A
        device ZFS cannot open may be listed by its guid, with the path it had in its note
        ("was /dev/sdb"): that path, then."""
        if self.name.isdigit() and self.note:
            was = re.match(r"was (/\S+)", self.note)
            if was:
                return was.group(1)
        return device_path(self.name)

    def leaves(self) -> list["VdevNode"]:
        if not self.children:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]


# What a scan is doing, as the pool view says it (the spec has no word for it).
SCANNING, FINISHED, CANCELED = "scanning", "finished", "canceled"


@dataclass
class ScanStatus:
    """The `scan:` (OpenZFS) or `scrub:` (zfs-fuse) part of `zpool status`: the pool's
    current or last scrub or resilver. Times are epoch seconds; `seconds_left` is ZFS's own
    estimate (None when it gives none: OpenZFS below 10 MB/s, or a paused scrub)."""

    function: str  # scrub or resilver
    state: str  # SCANNING, FINISHED or CANCELED
    percent: float | None = None
    seconds_left: int | None = None
    errors: int | None = None
    started: int | None = None
    ended: int | None = None
    paused: bool = False


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
    scan: ScanStatus | None = None

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


# The header lines of `zpool status` ("  pool: tank", " state: ONLINE", "  scan: ...");
# lines indented further continue the header above them.
_HEADER = re.compile(r"^\s{0,8}([a-z]+):(?:\s+(.*))?$")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), start=1)}
_CTIME = re.compile(r"(?:[A-Z][a-z]{2} )?([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (\d{4})")


def parse_ctime(text: str) -> int | None:
    """'Sun Dec  6 05:46:01 2026' (ctime(3), which zpool prints in the local time zone, in
    English whatever the locale) -> epoch seconds; None when it is not such a time."""
    found = _CTIME.search(text)
    if found is None or found.group(1) not in _MONTHS:
        return None
    month, day, hour, minute, second, year = found.groups()
    try:
        return int(time.mktime((int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second),
                                0, 0, -1)))
    except (OverflowError, ValueError):
        return None


def _dhms(text: str) -> int:
    """OpenZFS's durations: '00:03:10' or '2 days 01:00:00' -> seconds."""
    days = re.match(r"(\d+) days? ", text)
    h, m, s = (int(n) for n in text.rsplit(" ", 1)[-1].split(":"))
    return (int(days.group(1)) if days else 0) * 86400 + h * 3600 + m * 60 + s


def parse_scan(text: str) -> ScanStatus | None:
    """One scan report (its lines joined by spaces), in either dialect:

    OpenZFS 2.1 (cmd/zpool/zpool_main.c, print_scan_scrub_resilver_status and
    print_rebuild_status_impl):
      scrub repaired 0B in 00:00:01 with 0 errors on <ctime>
      resilvered 1.52M in 00:00:01 with 0 errors on <ctime>     (also "resilvered (draid...) ...")
      scrub canceled on <ctime> / resilver canceled on <ctime>
      scrub in progress since <ctime> <n> scanned at <r>/s, <n> issued at <r>/s, <n> total
          <n> repaired, 45.10% done, 00:01:02 to go               (or "no estimated completion time")
      scrub paused since <ctime> scrub started on <ctime> ... 45.10% done
      resilver in progress since <ctime> ... <n> resilvered, 45.10% done, ...
    zfs-fuse 0.7 (its onnv-era zpool_main.c, print_scrub_status), as seen on the lab:
      scrub in progress for 0h0m, 11.66% done, 0h0m to go
      scrub completed after 0h0m with 0 errors on <ctime>       (also "resilver ...")
      scrub stopped after 0h1m with 0 errors on <ctime>
    "none requested" (both) is no scan at all."""
    text = " ".join(text.split())
    if not text or text.startswith("none requested"):
        return None
    fuse = re.match(r"(scrub|resilver) in progress for \d+h\d+m, ([\d.]+)% done, (\d+)h(\d+)m to go", text)
    if fuse:
        function, percent, left_h, left_m = fuse.groups()
        return ScanStatus(function, SCANNING, float(percent), int(left_h) * 3600 + int(left_m) * 60)
    fuse = re.match(r"(scrub|resilver) (completed|stopped) after \d+h\d+m with (\d+) errors on (.+)", text)
    if fuse:
        function, how, errors, when = fuse.groups()
        done = how == "completed"
        return ScanStatus(function, FINISHED if done else CANCELED, 100.0 if done else None, errors=int(errors),
                          ended=parse_ctime(when))
    done = re.match(r"(scrub repaired|resilvered)(?: \([^)]*\))? \S+ in (.+?) with (\d+) errors on (.+)", text)
    if done:
        kind, took, errors, when = done.groups()
        ended = parse_ctime(when)
        started = ended - _dhms(took) if ended is not None and re.fullmatch(
            r"(\d+ days? )?\d+:\d\d:\d\d", took) else None
        return ScanStatus("scrub" if kind.startswith("scrub") else "resilver", FINISHED, 100.0,
                          errors=int(errors), started=started, ended=ended)
    canceled = re.match(r"(scrub|resilver)(?: \([^)]*\))? canceled on (.+)", text)
    if canceled:
        return ScanStatus(canceled.group(1), CANCELED, ended=parse_ctime(canceled.group(2)))
    running = re.match(r"(scrub|resilver)(?: \([^)]*\))? (in progress|paused) since (.+)", text)
    if running:
        function, how, rest = running.groups()
        paused = how == "paused"
        started_on = re.search(r"started on (.+)", rest) if paused else None
        percent = re.search(r"([\d.]+)% done", rest)
        left = re.search(r", ((?:\d+ days? )?\d+:\d\d:\d\d) to go", rest)
        return ScanStatus(function, SCANNING, float(percent.group(1)) if percent else None,
                          _dhms(left.group(1)) if left and not paused else None,
                          started=parse_ctime(started_on.group(1) if started_on else rest), paused=paused)
    return None


def _current_scan(scans: list[ScanStatus]) -> ScanStatus | None:
    """OpenZFS may report a scrub and a (sequential) resilver at once: the one running,
    else the one that ended last."""
    if not scans:
        return None
    running = [scan for scan in scans if scan.state == SCANNING]
    if running:
        return running[-1]
    return max(scans, key=lambda scan: scan.ended or 0)


def parse_zpool_status(text: str) -> list[PoolStatus]:
    pools: list[PoolStatus] = []
    current: PoolStatus | None = None
    in_config = False
    stack: list[tuple[int, VdevNode]] = []
    section = "data"
    header: str | None = None  # the header the lines being read belong to
    scans: list[list[str]] = []

    def end_pool() -> None:
        if current is not None:
            current.scan = _current_scan([scan for lines in scans if (scan := parse_scan(" ".join(lines)))])

    for raw in text.splitlines():
        line = raw.expandtabs(8)
        stripped = line.strip()
        found = _HEADER.match(line)
        if found and in_config and found.group(1) != "pool":
            found = None  # in the device list only a next pool's header counts
        if found and found.group(1) == "pool":
            end_pool()
            current = PoolStatus(name=(found.group(2) or "").strip(), state=None)
            pools.append(current)
            in_config, header, scans = False, "pool", []
            continue
        if current is None:
            continue
        if found:
            header, value = found.group(1), (found.group(2) or "").strip()
            if header == "state":
                current.state = value.split()[0] if value else None
            elif header in ("scan", "scrub"):  # OpenZFS says scan:, zfs-fuse scrub:
                scans.append([value])
            continue
        if stripped.startswith("NAME") and "STATE" in stripped:
            in_config, stack, section, header = True, [], "data", None
            continue
        if not in_config:
            if header in ("scan", "scrub") and stripped and scans:
                scans[-1].append(stripped)  # OpenZFS's scan report goes on below its first line
            continue
        if not stripped:
            continue
        if re.match(r"^\S", line) and ":" in stripped:  # "errors: ..." ends the config block
            in_config, header = False, None
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
        # After NAME STATE come READ WRITE CKSUM (not for spares), then ZFS's note, if any.
        counters = 0
        while counters < 3 and len(parts) > 2 + counters and re.fullmatch(r"[\d.]+[KMGTPE]?", parts[2 + counters]):
            counters += 1
        note = " ".join(parts[2 + counters:]) or None
        node = VdevNode(name, node_state, note=note)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if len(stack) <= 1:  # directly under the pool or a section: a top-level vdev
            getattr(current, section).append(node)
        else:
            stack[-1][1].children.append(node)
        stack.append((indent, node))
    end_pool()
    return pools


# Pool states a vdev label records (module/zfs/spa.c: pool_state_t).
LABEL_ACTIVE, LABEL_EXPORTED, LABEL_DESTROYED, LABEL_SPARE, LABEL_L2CACHE = 0, 1, 2, 3, 4


@dataclass
class Label:
    """What the first readable ZFS label on a device says."""

    state: int
    pool: str | None
    pool_guid: str | None = None

    @property
    def reusable(self) -> bool:
        """A destroyed pool's disk, or a spare/cache label with no imported pool claiming it,
        holds nothing a pool still needs; an active or exported pool's disk does."""
        return self.state in (LABEL_DESTROYED, LABEL_SPARE, LABEL_L2CACHE)


def parse_zdb_label(text: str) -> Label | None:
    state = pool = pool_guid = None
    for line in text.splitlines():
        if re.match(r"^-*\s*LABEL [1-9]", line.strip()):
            break  # the first label is enough
        found = re.match(r"^    (name|state|pool_guid): (.+)$", line)  # top-level keys only
        if found:
            key, value = found.groups()
            if key == "name" and pool is None:
                pool = value.strip().strip("'")
            elif key == "state" and state is None and value.strip().isdigit():
                state = int(value)
            elif key == "pool_guid" and pool_guid is None:
                pool_guid = value.strip()
    return Label(state, pool, pool_guid) if state is not None else None


# What a ZFS's streams can do, as `stream_features` names it: compressed (send -c), large
# blocks (-L), embedded data (-e), raw (-w), resumable (receive -s, send -t), bookmarks, user
# holds (zfs hold) and native encryption (load-key). OpenZFS has them all; zfs-fuse only holds.
STREAM_FEATURES = ("compressed", "large_blocks", "embedded_data", "raw", "resumable", "bookmarks", "holds",
                   "encryption")


# `zfs receive -s` tokens: a version, a checksum, a length, and the packed (compressed) nvlist
# in hex, dash-separated. Checked before a token from a partner reaches a command.
RESUME_TOKEN = re.compile(r"[0-9]{1,3}-[0-9a-f]{1,64}-[0-9a-f]{1,16}-[0-9a-f]{1,65536}")


def parse_stream_features(usage: str) -> frozenset[str]:
    """The stream features a `zfs` usage text (`zfs -?`) shows: its commands and their flags."""
    send_flags, receive_flags, commands = set(), set(), set()
    resume_token = False
    for line in usage.splitlines():
        words = line.split()
        if not line.startswith("\t") or not words:
            continue
        commands.add(words[0])
        flags = {c for group in re.findall(r"\[-([A-Za-z]+)\]", line) for c in group}
        if words[0] == "send":
            send_flags |= flags
            resume_token = resume_token or "-t" in words
        elif words[0] in ("receive", "recv"):
            receive_flags |= flags
    found = {"compressed": "c" in send_flags, "large_blocks": "L" in send_flags, "embedded_data": "e" in send_flags,
             "raw": "w" in send_flags, "resumable": resume_token and "s" in receive_flags,
             "bookmarks": "bookmark" in commands, "holds": "hold" in commands, "encryption": "load-key" in commands}
    return frozenset(name for name, present in found.items() if present)


class ZfsDriver:
    def __init__(self, runner: Runner):
        self.runner = runner
        self._status_full_paths: bool | None = None  # OpenZFS has `zpool status -P`; zfs-fuse not
        self._stream_features: frozenset[str] | None = None

    def stream_features(self) -> frozenset[str]:
        """What this ZFS's send and receive can do (STREAM_FEATURES), read once from its own
        usage text, so that a feature is used only where the command has it."""
        if self._stream_features is None:
            try:
                out = self.runner.run(["zfs", "-?"], check=False, timeout=15, changes=False)
            except CommandNotFound:
                return frozenset()
            self._stream_features = parse_stream_features(out.stdout + out.stderr)
        return self._stream_features

    @property
    def has_encryption(self) -> bool:
        """OpenZFS has native encryption (`zfs load-key`, the `encryption` property); zfs-fuse not."""
        return "encryption" in self.stream_features()

    def version(self) -> str | None:
        """The running ZFS's version: OpenZFS's kernel module, or the zfs-fuse daemon's package."""
        try:
            out = self.runner.run(["zfs", "version"], check=False, timeout=15)
        except CommandNotFound:
            return None
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and lines:
            kmod = [line for line in lines if line.startswith("zfs-kmod-")]
            return (kmod[0] if kmod else lines[0]).removeprefix("zfs-kmod-").removeprefix("zfs-")
        if not self.available():
            return None
        pkg = self.runner.run(["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"], check=False)
        return f"zfs-fuse {pkg.stdout.strip()}" if pkg.returncode == 0 and pkg.stdout.strip() else "zfs-fuse"

    # -- cache and dedup-table figures (system stats) -----------------------------------------
    ARCSTATS = "/proc/spl/kstat/zfs/arcstats"

    def arc_stats(self) -> dict[str, int]:
        """OpenZFS's ARC counters (name -> value); empty where the implementation has none
        (zfs-fuse keeps its cache inside its own process and reports nothing)."""
        try:
            with open(self.ARCSTATS) as f:
                lines = f.read().splitlines()[2:]  # two header lines, then "name type data"
        except OSError:
            return {}
        stats = {}
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                stats[parts[0]] = int(parts[2])
        return stats

    def ddt_sizes(self, pool: str) -> tuple[int, int] | None:
        """(bytes on disk, bytes in core) of a pool's dedup table, from `zpool status -D`;
        (0, 0) when it has none, None when the pool cannot be asked."""
        out = self.runner.run(["zpool", "status", "-D", pool], check=False)
        if out.returncode != 0:
            return None
        m = re.search(r"DDT entries (\d+), size (\d+) on disk, (\d+) in core", out.stdout)
        if m is None:  # OpenZFS says "no DDT entries"; zfs-fuse says nothing at all
            return 0, 0
        entries, disk, core = (int(g) for g in m.groups())
        return entries * disk, entries * core

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
            raise out.error()
        return parse_zpool_status(out.stdout)

    def label(self, device: str) -> Label | None:
        """The ZFS label on a device, if any (`zdb -l`: works for pools not imported here)."""
        out = self.runner.run(["zdb", "-l", device], check=False, timeout=30)
        return parse_zdb_label(out.stdout)

    def known_pool_guids(self) -> set[str]:
        """Guids of pools imported here or importable (exported, or in use by another host)."""
        guids = set(self.runner.run(["zpool", "list", "-H", "-o", "guid"], check=False).stdout.split())
        listing = self.runner.run(["zpool", "import"], check=False).stdout
        guids.update(re.findall(r"^\s*id:\s*(\d+)", listing, re.M))
        return guids

    def importable_names(self) -> set[str]:
        """Names of pools imported here or importable (exported, or in use by another host)."""
        names = set(self.runner.run(["zpool", "list", "-H", "-o", "name"], check=False).stdout.split())
        listing = self.runner.run(["zpool", "import"], check=False).stdout
        names.update(re.findall(r"^\s*pool:\s*(\S+)", listing, re.M))
        return names

    def clear_label(self, device: str) -> None:
        """Forget that a device was in a pool (after the appliance removed it from one).
        OpenZFS has `zpool labelclear`; zfs-fuse has not, so its four 256 KiB label areas
        (two at the start, two at the end of the device) are zeroed directly."""
        out = self.runner.run(["zpool", "labelclear", "-f", device], check=False)
        if out.returncode == 0:
            return
        if "unrecognized command" not in out.stderr:
            raise out.error()
        label_size = 256 << 10
        fd = os.open(device, os.O_WRONLY)
        try:
            size = os.lseek(fd, 0, os.SEEK_END) // label_size * label_size
            zeros = bytes(2 * label_size)
            for offset in (0, size - 2 * label_size):
                os.pwrite(fd, zeros, offset)
            os.fsync(fd)
        finally:
            os.close(fd)


# -- pools ------------------------------------------------------------------------------------

def run_retrying_busy(runner: Runner, argv: list[str], *, attempts: int = 5, pause: float = 0.5,
                      gone: tuple[str, ...] = ()) -> None:
    """Unmounting can fail for a moment while the kernel still holds the mount (zfs-fuse
    especially): retry a few times before reporting 'busy'. Stderr matching `gone` means the
    target no longer exists, which is success for a destroy."""
    for attempt in range(attempts):
        out = runner.run(argv, check=False)
        if out.returncode == 0 or any(text in out.stderr for text in gone):
            return
        if "busy" not in out.stderr or attempt == attempts - 1:
            raise out.error()
        time.sleep(pause)


def parse_ratio(text: str) -> float:
    """'1.23x' -> 1.23"""
    return float(text.strip().rstrip("x") or 1)


def format_ratio(text: str) -> str:
    """A ratio as the spec writes it, '1.23x': OpenZFS's parsable output (-p) gives '1.23',
    zfs-fuse gives '1.23x'."""
    return f"{parse_ratio(text):.2f}x"


def parse_zpool_get(text: str) -> dict[str, str]:
    """`zpool get PROPS POOL` (zfs-fuse has no -H): a NAME PROPERTY VALUE SOURCE table."""
    values = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            values[parts[1]] = parts[2]
    return values


@dataclass
class PoolSummary:
    name: str
    guid: str
    health: str


class ZfsCommands:
    """What pool and dataset commands share: the runner, and setting a property."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def set(self, name: str, prop: str, value: str) -> None:
        """Sets a property of a dataset (a pool's properties are its root dataset's)."""
        self.runner.run(["zfs", "set", f"{prop}={value}", name])


class ZfsPoolOps(ZfsCommands):
    """Pool-level commands. Separate from ZfsDriver's probing so each class keeps one job."""

    def __init__(self, runner: Runner):
        super().__init__(runner)
        self._has_sync: bool | None = None
        self._has_logicalused: bool | None = None

    # capabilities -----------------------------------------------------------------------------
    def _property_known(self, prop: str) -> bool | None:
        """True/False when ZFS answered; None when it could not be asked (daemon down)."""
        out = self.runner.run(["zfs", "get", "-H", "-o", "value", prop], check=False)
        if "bad property list" in out.stderr:
            return False
        return True if out.returncode == 0 else None

    @property
    def has_sync(self) -> bool:
        """OpenZFS has the `sync` property; zfs-fuse does not (its writes follow POSIX sync)."""
        if self._has_sync is None:
            self._has_sync = self._property_known("sync")
        return bool(self._has_sync)

    @property
    def has_logicalused(self) -> bool:
        if self._has_logicalused is None:
            self._has_logicalused = self._property_known("logicalused")
        return bool(self._has_logicalused)

    # reading ----------------------------------------------------------------------------------
    def list(self) -> list[PoolSummary]:
        out = self.runner.run(["zpool", "list", "-H", "-o", "name,guid,health"], check=False)
        if out.returncode != 0:
            raise out.error()
        pools = []
        for line in out.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                pools.append(PoolSummary(*parts))
        return pools

    def pool_props(self, pool: str, props: builtins.list[str]) -> dict[str, str]:
        return parse_zpool_get(self.runner.run(["zpool", "get", ",".join(props), pool]).stdout)

    def dataset_props(self, dataset: str, props: builtins.list[str]) -> dict[str, str]:
        out = self.runner.run(["zfs", "get", "-Hp", "-o", "property,value", ",".join(props), dataset])
        values = {}
        for line in out.stdout.splitlines():
            prop, _, value = line.partition("\t")
            values[prop] = value
        return values

    def _tree_props(self, pool: str, props: builtins.list[str]) -> dict[str, dict[str, str]]:
        out = self.runner.run(["zfs", "get", "-Hp", "-r", "-o", "name,property,value", ",".join(props), pool])
        found: dict[str, dict[str, str]] = {}
        for line in out.stdout.splitlines():
            name, prop, value = line.split("\t")
            found.setdefault(name, {})[prop] = value
        return found

    def mount_missing(self, pool: str, *, encryption: bool = False) -> builtins.list[str]:
        """Mount the pool's datasets that should be mounted and are not; returns them. With
        `encryption` (a ZFS that has it), a dataset whose key is not loaded is left as it is
        (a replica of an encrypted volume, whose key this appliance does not hold)."""
        props = self._tree_props(pool, ["mounted", "canmount", "mountpoint", *(["keystatus"] if encryption else [])])
        mounted = []
        for name, p in props.items():  # parents come first in zfs get -r output
            if p.get("mounted") == "no" and p.get("canmount") == "on" and p.get("keystatus") != "unavailable" \
                    and p.get("mountpoint") not in ("none", "legacy", "-", None):
                self.runner.run(["zfs", "mount", name])
                mounted.append(name)
        return mounted

    def locked_keys(self, pool: str) -> builtins.list[tuple[str, str]]:
        """The pool's encryption roots whose key is not loaded: (dataset, keylocation)."""
        props = self._tree_props(pool, ["encryptionroot", "keystatus", "keylocation"])
        return [(name, p.get("keylocation", "")) for name, p in props.items()
                if p.get("encryptionroot") == name and p.get("keystatus") == "unavailable"]

    def load_key(self, dataset: str, location: str | None = None) -> None:
        """Loads the wrapping key of an encryption root: from its own keylocation, or from
        `location` (file://...). The key's bytes never pass through an argument or a log."""
        self.runner.run(["zfs", "load-key", *(["-L", location] if location else []), dataset])

    # changing ---------------------------------------------------------------------------------
    def create(self, name: str, vdevs: builtins.list[str], *, mountpoint: str, props: dict[str, str]) -> None:
        argv = ["zpool", "create", "-f", "-m", mountpoint]
        for prop, value in props.items():
            argv += ["-O", f"{prop}={value}"]
        self.runner.run(argv + [name, *vdevs])

    def add(self, pool: str, vdevs: builtins.list[str]) -> None:
        self.runner.run(["zpool", "add", "-f", pool, *vdevs])

    def remove(self, pool: str, devices: builtins.list[str]) -> None:
        self.runner.run(["zpool", "remove", pool, *devices])

    def replace(self, pool: str, old: str, new: str) -> None:
        """Replaces device `old` (as ZFS names it in the pool: a path, or a guid for one it
        cannot open) by the unused disk `new`; the resilver runs on after this returns."""
        self.runner.run(["zpool", "replace", "-f", pool, old, new])

    def scrub(self, pool: str) -> None:
        """Starts a scrub (it runs on after this returns). No dataset changes: readers keep
        what they read."""
        self.runner.run(["zpool", "scrub", pool], changes=False)

    def scrub_stop(self, pool: str) -> None:
        self.runner.run(["zpool", "scrub", "-s", pool], changes=False)

    def export(self, pool: str) -> None:
        run_retrying_busy(self.runner, ["zpool", "export", pool])

    def import_by_guid(self, guid: str, name: str) -> None:
        self.runner.run(["zpool", "import", guid, name])

    def destroy(self, pool: str) -> None:
        run_retrying_busy(self.runner, ["zpool", "destroy", "-f", pool])


# -- datasets and snapshots -------------------------------------------------------------------

DATASET_PROPS = ["type", "guid", "origin", "used", "referenced", "available", "quota", "creation",
                 "mountpoint", "volsize", "volblocksize", "recordsize"]


def parse_zfs_get(text: str, snapshot_props: set[str] | None = None) -> dict[str, dict[str, str]]:
    """`zfs get -Hp -o name,property,value` -> {dataset: {property: value}}, in ZFS's order.

    A pool's read can hold 10,000 snapshots times every property asked for: lines are taken one
    at a time, each property name is one shared string, and with `snapshot_props` a snapshot
    keeps only those properties, and only the ones it has (not "-")."""
    found: dict[str, dict[str, str]] = {}
    names: dict[str, str] = {}
    for line in io.StringIO(text):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        name, prop, value = parts
        if snapshot_props is not None and "@" in name and (prop not in snapshot_props or value == "-"):
            continue
        props = found.get(name)
        if props is None:
            props = found[name] = {}
        props[names.setdefault(prop, prop)] = value
    return found


class ZfsDatasetOps(ZfsCommands):
    """Dataset and snapshot commands (filesystems, zvols, snapshots, clones)."""

    def __init__(self, runner: Runner, zfs: ZfsDriver):
        super().__init__(runner)
        self.zfs = zfs
        self._has_zvols: bool | None = None
        self._rename_needs_unmount = False

    @property
    def has_zvols(self) -> bool:
        """OpenZFS has zvols; zfs-fuse's `zfs create -V` aborts ('Function not implemented'),
        so it is told apart by what it is rather than by trying."""
        if self._has_zvols is None:
            version = self.zfs.version()
            self._has_zvols = bool(version and not version.startswith("zfs-fuse"))
        return self._has_zvols

    def tree(self, root: str, user_props: list[str],
             snapshot_props: set[str] | None = None) -> dict[str, dict[str, str]]:
        """Every dataset and snapshot under `root` with the listed properties, in one command
        (snapshots with only `snapshot_props`, when given: see parse_zfs_get)."""
        out = self.runner.run(["zfs", "get", "-Hp", "-r", "-o", "name,property,value",
                               ",".join(DATASET_PROPS + user_props), root])
        return parse_zfs_get(out.stdout, snapshot_props)

    def get(self, name: str, props: list[str]) -> dict[str, str]:
        out = self.runner.run(["zfs", "get", "-Hp", "-o", "name,property,value", ",".join(props), name])
        return parse_zfs_get(out.stdout).get(name, {})

    @staticmethod
    def _options(props: dict[str, str]) -> list[str]:
        return [arg for prop, value in props.items() for arg in ("-o", f"{prop}={value}")]

    def create_filesystem(self, name: str, props: dict[str, str]) -> None:
        self.runner.run(["zfs", "create", *self._options(props), name])

    def create_zvol(self, name: str, size: int, block_size: int, props: dict[str, str]) -> None:
        self.runner.run(["zfs", "create", "-V", str(size), "-b", str(block_size),
                         *self._options(props), name])

    def snapshot(self, name: str, props: dict[str, str] | None = None) -> None:
        self.runner.run(["zfs", "snapshot", *self._options(props or {}), name])

    def clone(self, snapshot: str, name: str, props: dict[str, str]) -> None:
        self.runner.run(["zfs", "clone", *self._options(props), snapshot, name])

    def rename(self, old: str, new: str) -> None:
        """zfs-fuse refuses to rename a mounted filesystem ('dataset is busy', even idle and
        unmounted with zfs umount); with mountpoint=none it renames, and the inherited
        mountpoint then follows the new name. Learnt once, then done that way directly."""
        if not self._rename_needs_unmount:
            out = self.runner.run(["zfs", "rename", old, new], check=False)
            if out.returncode == 0:
                return
            if "busy" not in out.stderr:
                raise out.error()
            self._rename_needs_unmount = True
        if self.get(old, ["type"]).get("type") != "filesystem":
            run_retrying_busy(self.runner, ["zfs", "rename", old, new])
            return
        run_retrying_busy(self.runner, ["zfs", "set", "mountpoint=none", old])
        try:
            self.runner.run(["zfs", "rename", old, new])
        finally:  # mounted again under whichever name it has now
            name = new if "type" in self._try_get(new) else old
            self.runner.run(["zfs", "inherit", "mountpoint", name])

    def _try_get(self, name: str) -> dict[str, str]:
        try:
            return self.get(name, ["type"])
        except CommandError:
            return {}

    def inherit(self, name: str, prop: str) -> None:
        self.runner.run(["zfs", "inherit", prop, name])

    def stamp(self, name: str, prop: str, value: str) -> None:
        """Sets one of the appliance's own bookkeeping properties: a change no reader sees, so
        readers are not told of it (the caller tells them once for a batch)."""
        self.runner.run(["zfs", "set", f"{prop}={value}", name], changes=False)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        run_retrying_busy(self.runner, ["zfs", "destroy", *(["-r"] if recursive else []), name],
                          gone=("could not find", "does not exist"))

    # -- replication streams: argument lists for the pipeline that carries them -------------
    @staticmethod
    def send_argv(snapshot: str, base: str | None = None, options: Sequence[str] = ()) -> list[str]:
        """A full stream of `snapshot`, or only its difference from `base` (a snapshot of the
        same dataset); `options`: stream flags both sides have (-c, -L, -e)."""
        return ["zfs", "send", *options, *(["-i", base] if base else []), snapshot]

    @staticmethod
    def receive_argv(snapshot: str, *, full: bool, resumable: bool = False,
                     props: dict[str, str] | None = None) -> list[str]:
        """Receives a stream as `snapshot`. A full stream replaces the (empty) replica dataset
        (-F); an incremental one is refused when the replica changed since its last snapshot.
        `resumable` (-s): what arrived of a stream that breaks is kept, with a resume token.
        `props` (-o): set on the received dataset (a new one: its stamps, readonly)."""
        return ["zfs", "receive", *(["-s"] if resumable else []), *(["-F"] if full else []),
                *ZfsDatasetOps._options(props or {}), snapshot]

    @staticmethod
    def send_resume_argv(token: str) -> list[str]:
        """The rest of an interrupted stream, from where the receiving side's token says."""
        if not RESUME_TOKEN.fullmatch(token):
            raise ValueError("not a resume token")
        return ["zfs", "send", "-t", token]

    def resume_token(self, dataset: str) -> str | None:
        """The token of an interrupted `receive -s` into `dataset`, or None."""
        out = self.runner.run(["zfs", "get", "-H", "-o", "value", "receive_resume_token", dataset], check=False)
        token = out.stdout.strip()
        return token if out.returncode == 0 and RESUME_TOKEN.fullmatch(token) else None

    def abort_resumable(self, dataset: str) -> None:
        """Drops what an interrupted `receive -s` kept (the dataset is as before it)."""
        out = self.runner.run(["zfs", "receive", "-A", dataset], check=False)
        if out.returncode != 0 and "does not have any resumable receive state" not in out.stderr:
            raise out.error()

    def resume_target(self, token: str) -> tuple[str, int] | None:
        """(guid of the snapshot the stream carries, bytes already received) of a resume token,
        read by this side's `zfs send -nvt`; None where the stream cannot go on from here (its
        snapshot is gone, or the token is not one ZFS reads)."""
        if not RESUME_TOKEN.fullmatch(token):
            return None
        out = self.runner.run(["zfs", "send", "-nv", "-t", token], check=False, changes=False)
        if out.returncode != 0:
            return None
        fields = dict(re.findall(r"^\s*(toguid|bytes) = (0x[0-9a-fA-F]+|\d+)\s*$", out.stdout + out.stderr, re.M))
        if "toguid" not in fields:
            return None
        return str(int(fields["toguid"], 0)), int(fields.get("bytes", "0"), 0)

    # -- what keeps an incremental possible: bookmarks and holds ---------------------------------
    def bookmark(self, snapshot: str, bookmark: str) -> None:
        """Bookmarks `snapshot` (dataset@snap) as `bookmark` (dataset#name): an incremental can
        be sent from it after the snapshot is gone. One already there is left as it is."""
        out = self.runner.run(["zfs", "bookmark", snapshot, bookmark], check=False)
        if out.returncode != 0 and not ("exists" in out.stderr and self.bookmarks(bookmark.split("#", 1)[0])
                                        .get(bookmark.split("#", 1)[1]) is not None):
            raise out.error()

    def bookmarks(self, dataset: str) -> dict[str, tuple[str, int]]:
        """The bookmarks of `dataset`: {name after '#': (guid of the snapshot it marks, the
        transaction group that snapshot was taken in)}."""
        out = self.runner.run(["zfs", "list", "-H", "-p", "-t", "bookmark", "-d", "1", "-o", "name,guid,createtxg",
                               dataset], check=False, changes=False)
        if out.returncode != 0:
            if "does not exist" in out.stderr:
                return {}
            raise out.error()
        found = {}
        for line in out.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and "#" in fields[0] and fields[2].strip().isdigit():
                found[fields[0].split("#", 1)[1]] = (fields[1].strip(), int(fields[2]))
        return found

    def destroy_bookmark(self, bookmark: str) -> None:
        out = self.runner.run(["zfs", "destroy", bookmark], check=False)
        if out.returncode != 0 and "does not exist" not in out.stderr and "could not find" not in out.stderr:
            raise out.error()

    def hold(self, tag: str, snapshot: str) -> None:
        """A user hold: ZFS refuses to destroy the snapshot until it is released. Holding it
        again under the same tag is no error."""
        out = self.runner.run(["zfs", "hold", tag, snapshot], check=False)
        if out.returncode != 0 and "tag already exists" not in out.stderr:
            raise out.error()

    def release(self, tag: str, snapshot: str) -> None:
        out = self.runner.run(["zfs", "release", tag, snapshot], check=False)
        if out.returncode != 0 and not any(word in out.stderr for word in ("no such tag", "does not exist",
                                                                           "could not find")):
            raise out.error()

    def holds(self, snapshot: str) -> list[str]:
        """The tags of the user holds on `snapshot` (none where ZFS cannot list them: zfs-fuse's
        `zfs holds` needs a pyzfs it lacks)."""
        out = self.runner.run(["zfs", "holds", "-H", snapshot], check=False, changes=False)
        if out.returncode != 0:
            return []
        return [line.split("\t")[1] for line in out.stdout.splitlines() if line.count("\t") >= 2]

    def snapshot_numbers(self, dataset: str, prop: str) -> dict[str, int]:
        """{snapshot name after '@': its numeric `prop`} for the snapshots of `dataset` (one
        command; zfs-fuse's `zfs get` has no -t, so the dataset's own line is left out here)."""
        out = self.runner.run(["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,value", prop, dataset],
                              check=False, changes=False)
        if out.returncode != 0:
            return {}
        found = {}
        for line in out.stdout.splitlines():
            name, _, value = line.partition("\t")
            if "@" in name and "#" not in name and value.strip().isdigit():
                found[name.split("@", 1)[1]] = int(value)
        return found

    def rollback(self, snapshot: str) -> None:
        """Rolls the dataset back to `snapshot`, destroying its later snapshots (-r)."""
        self.runner.run(["zfs", "rollback", "-r", snapshot])

    def unmount(self, name: str) -> None:
        run_retrying_busy(self.runner, ["zfs", "unmount", name], gone=("not currently mounted",))

    def mount(self, name: str) -> None:
        """Mounts a filesystem; one whose encryption key is not loaded here (a replica of an
        encrypted volume: the partner holds no key) stays unmounted, as it must."""
        out = self.runner.run(["zfs", "mount", name], check=False)
        if out.returncode != 0 and "already mounted" not in out.stderr and "key not loaded" not in out.stderr:
            raise out.error()

    def receive_new(self, snapshot: str, *, stdin: int, props: dict[str, str]) -> None:
        """Receives a full stream as a new dataset (none of that name exists), with `props` set
        on it as it is made. Not resumable: a stream that breaks leaves no dataset behind."""
        self.runner.run(self.receive_argv(snapshot, full=False, props=props), stdin=stdin, timeout=NO_TIMEOUT)

    def encrypted(self, name: str) -> bool:
        """Whether a dataset is encrypted (never on a ZFS without encryption)."""
        if not self.zfs.has_encryption:
            return False
        return self.get(name, ["encryption"]).get("encryption", "off") not in ("off", "-", "")

    def receive(self, snapshot: str, *, full: bool, stdin: int, resumable: bool = False) -> None:
        """Receives the stream on file descriptor `stdin` as `snapshot`. No timeout: a stream
        takes as long as it takes, and the sender's watchdog ends one that stalls (the receive
        then sees the end of its input and fails, leaving nothing half-received)."""
        self.runner.run(self.receive_argv(snapshot, full=full, resumable=resumable), stdin=stdin,
                        timeout=NO_TIMEOUT)
