"""kill -9 of the server in the middle of a volume or pool update that changes several things
(a rename and a size; a rename and properties): after the next start the update is whole or
absent, in the API and in ZFS alike.

Kill points are deterministic, as in test_crash.py: the server is started with
VSNAP_FAULT_KILL_AFTER_COMMANDS=N (the test-only crash injection in vsnap/faults.py), which
kills its process group right after the N-th system-changing step of the request. N runs 1,
2, ... until the update completes without being killed."""
from __future__ import annotations

import signal
import time

import pytest
import requests

from .zfs_tools import PREFIX, pool_names, unused, zfs_get

FAULT = "VSNAP_FAULT_KILL_AFTER_COMMANDS"
MAX_POINTS = 20  # an update with more steps than this is a finding of its own
MIB = 1 << 20
FRESH = {"Cache-Control": "no-cache"}


def _restart(app, fault: int | None = None) -> None:
    app.stop(signal.SIGKILL)
    if fault is None:
        app.extra_env.pop(FAULT, None)
    else:
        app.extra_env[FAULT] = str(fault)
    app.start()


def _killed_after_step(app, n: int, method: str, path: str, body) -> bool:
    """Runs the request on a server armed to kill itself after its n-th step; whether it was
    killed. A normal server runs again afterwards."""
    try:
        _restart(app, n)
        try:
            response = app.request(method, path, json=body, timeout=120)
        except requests.RequestException:
            response = None
        deadline = time.monotonic() + 1
        while app.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = app.proc.poll() is not None
        if not killed:
            assert response is not None and response.status_code == 200, \
                f"{method} {path}: {response.status_code if response else None} {response.text if response else ''}"
    finally:
        _restart(app)
    return killed


def test_kill_after_each_step_of_a_volume_update(appliance, pools):
    pool = pools(f"{PREFIX}ku", "raid0", unused(appliance, 1))
    outcomes = []
    for n in range(1, MAX_POINTS + 1):
        fs = appliance.ok("POST", "/api/volume", json={"name": f"before{n}", "volume_type": "filesystem",
                                                       "pool_id": pool["id"], "size_total": 64 * MIB})
        with open(f"/vsnap/{pool['name']}/before{n}/data", "w") as f:
            f.write("precious")
        killed = _killed_after_step(appliance, n, "PUT", f"/api/volume/{fs['id']}",
                                    {"name": f"after{n}", "size_total": 128 * MIB})
        details = appliance.ok("GET", f"/api/volume/{fs['id']}", headers=FRESH)
        done = details["name"] == f"after{n}"
        outcomes.append(done)
        assert (details["name"], details["size_total"]) == \
            ((f"after{n}", str(128 * MIB)) if done else (f"before{n}", str(64 * MIB))), (n, details)
        dataset = f"{pool['name']}/{details['name']}"
        assert zfs_get(dataset, "quota") == details["size_total"], n
        assert zfs_get(dataset, "mounted") == "yes", n
        with open(f"/vsnap/{dataset}/data") as f:
            assert f.read() == "precious", n
        if not killed:
            break
    else:
        pytest.fail(f"the update did not complete within {MAX_POINTS} kill points")
    assert outcomes[-1] is True


def test_kill_after_each_step_of_a_pool_update(appliance, pools):
    disk = unused(appliance, 1)
    for n in range(1, MAX_POINTS + 1):
        old, new = f"{PREFIX}kp{n}a", f"{PREFIX}kp{n}b"
        pool = pools(old, "raid0", disk)
        with open(f"/vsnap/{old}/data", "w") as f:
            f.write("precious")
        killed = _killed_after_step(appliance, n, "PUT", f"/api/pool/{pool['id']}",
                                    {"name": new, "compression": False, "deduplication": True})
        details = appliance.ok("GET", f"/api/pool/{pool['id']}")
        done = details["name"] == new
        assert (details["name"], details["compression"], details["deduplication"]) == \
            ((new, False, True) if done else (old, True, False)), (n, details)
        assert details["name"] in pool_names() and ({old, new} - {details["name"]}).isdisjoint(pool_names())
        assert (zfs_get(details["name"], "compression"), zfs_get(details["name"], "dedup")) == \
            (("off", "on") if done else ("on", "off")), n
        assert zfs_get(details["name"], "mountpoint") == f"/vsnap/{details['name']}", n
        with open(f"/vsnap/{details['name']}/data") as f:
            assert f.read() == "precious", n
        appliance.ok("DELETE", f"/api/pool/{pool['id']}")
        if not killed:
            break
    else:
        pytest.fail(f"the update did not complete within {MAX_POINTS} kill points")
