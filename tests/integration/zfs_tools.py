"""Reading ZFS with its own tools, independently of the server under test."""
from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest

# Every pool these tests make starts with this (another prefix lets two runs share zfs-fuse).
PREFIX = os.environ.get("VSNAP_TEST_POOL_PREFIX", "vtp")


def zpool(*args, check=True) -> str:
    return subprocess.run(["zpool", *args], capture_output=True, text=True, check=check, timeout=120).stdout


def zfs_get(dataset: str, prop: str) -> str:
    return subprocess.run(["zfs", "get", "-Hp", "-o", "value", prop, dataset], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def pool_names() -> set[str]:
    return set(zpool("list", "-H", "-o", "name", check=False).split())


def layout(pool: str) -> dict[str, list[str]]:
    """zpool status read independently of the server: top-level vdev -> its devices."""
    groups: dict[str, list[str]] = {}
    section, current = "data", None
    in_config = False
    for line in zpool("status", pool).splitlines():
        if line.strip().startswith("NAME"):
            in_config = True
            continue
        if not in_config or not line.strip() or line.startswith("errors"):
            continue
        depth = (len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())) // 2
        name = line.split()[0]
        if depth == 4 and name == pool:
            continue
        if depth == 4:  # logs / cache / spares headers
            section = name
            continue
        if depth == 5:
            current = f"{section}:{name}"
            groups[current] = []
        elif depth == 6:
            groups[current].append(name)
    return groups


def unused(appliance, count: int) -> list[dict]:
    disks = appliance.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"]
    if len(disks) < count:
        pytest.fail(f"need {count} unused lab disks, have {len(disks)}")
    return disks[:count]


@contextlib.contextmanager
def raid0_pool(appliance, name: str, disks: int):
    """A test module's raid0 pool of `disks` unused disks (multipool on); afterwards its
    volumes, then the pool, are deleted."""
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    made = appliance.ok("POST", "/api/pool", json={"name": name, "pool_type": "raid0",
                                                   "disk_list": [d["uuid"] for d in unused(appliance, disks)]})
    yield made
    for v in appliance.ok("GET", "/api/volume", params={"pool_id": made["id"]})["volumes"]:
        appliance.delete(f"/api/volume/{v['id']}")
    appliance.delete(f"/api/pool/{made['id']}")


def short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _retrying(argv: list[str], gone: str, attempts: int = 10) -> None:
    """zfs-fuse's unmount can report 'busy' for a moment: retry a destroy a few times."""
    for _ in range(attempts):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode == 0 or gone in result.stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"{' '.join(argv)} kept failing: {result.stderr.strip()}")


def destroy_pool(name: str) -> None:
    _retrying(["zpool", "destroy", "-f", name], "no such pool")


def destroy_dataset(name: str, *flags: str) -> None:
    _retrying(["zfs", "destroy", *flags, name], "does not exist")
