"""Load never corrupts: 50 clients (each its own keep-alive requests.Session) for a bounded
time, doing mixed creates, snapshots, clones, NFS/SMB shares, host maps/unmaps and deletes on
SHARED objects (a few volume, snapshot, clone and host names that every client fights over).

Every answer is recorded: no 5xx, no "database is locked" or OperationalError (in an answer or
in the server's log), and every refusal is a documented one (400, 404, 409) as the spec's error
object. At the end the API and the real system agree, with no orphan on either side: ZFS
datasets and snapshots (zfs get, with the com.vsnap ids), the NFS exports file and Samba's
shares file, and tgt's targets (tgtadm) against the hosts' mappings. Then everything is removed.

`make test` runs VSNAP_CONCURRENCY_SECONDS (default 60); `make test-long` (marker `long`)
VSNAP_CONCURRENCY_LONG_SECONDS (default 600).
"""
from __future__ import annotations

import collections
import os
import random
import re
import threading
import time

import pytest
import requests

from .system_state import nfs_exports, smb_shares, tgt_targets_by_name, zfs_tree
from .zfs_tools import PREFIX, unused

CLIENTS = int(os.environ.get("VSNAP_CONCURRENCY_CLIENTS", "50"))
SHORT_SECONDS = float(os.environ.get("VSNAP_CONCURRENCY_SECONDS", "60"))
LONG_SECONDS = float(os.environ.get("VSNAP_CONCURRENCY_LONG_SECONDS", "600"))
MIB = 1 << 20
POOL = f"{PREFIX}conc"
FS_NAMES = ["fs0", "fs1", "fs2", "fs3"]
LUN_NAMES = ["lun0", "lun1", "lun2"]
CLONE_NAMES = ["cl0", "cl1", "cl2", "cl3"]
SNAP_NAMES = ["s0", "s1", "s2"]
HOST_NAMES = ["conc-h0", "conc-h1", "conc-h2"]
IQN = "iqn.2026-11.test.vsnap:conc-{}"
DOCUMENTED = {400, 404, 409}
BAD_WORDS = ("database is locked", "OperationalError", "Traceback", "sqlite3.")
FRESH = {"Cache-Control": "no-cache"}


# -- the shared world -------------------------------------------------------------------------------
def _sweep(app) -> None:
    """Removes this test's hosts and pool (left by an interrupted earlier run, or at the end)."""
    for h in app.ok("GET", "/api/host", headers=FRESH)["hosts"]:
        if h["name"] in HOST_NAMES:
            app.delete(f"/api/host/{h['id']}")
    for p in app.ok("GET", "/api/pool", headers=FRESH)["pools"]:
        if p["name"] == POOL:
            vols = app.ok("GET", "/api/volume", params={"pool_id": p["id"]}, headers=FRESH)["volumes"]
            for v in sorted(vols, key=lambda v: not v["is_clone"]):
                app.delete(f"/api/volume/{v['id']}")
            r = app.delete(f"/api/pool/{p['id']}")
            assert r.status_code == 200, r.text


@pytest.fixture
def world(appliance):
    app = appliance
    app.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    _sweep(app)
    pool = app.ok("POST", "/api/pool", json={"name": POOL, "pool_type": "raid0",
                                             "disk_list": [d["uuid"] for d in unused(app, 1)]})
    for name in FS_NAMES[:2]:
        app.ok("POST", "/api/volume", json={"name": name, "volume_type": "filesystem", "pool_id": pool["id"]})
    for name in LUN_NAMES[:2]:
        app.ok("POST", "/api/volume", json={"name": name, "volume_type": "lun", "pool_id": pool["id"],
                                            "size_total": 8 * MIB})
    for name in HOST_NAMES[:2]:
        app.ok("POST", "/api/host", json={"name": name, "iqns": [IQN.format(name)]})
    yield pool
    _sweep(app)


class Client(threading.Thread):
    """One of the clients: random operations on the shared names until the deadline."""

    def __init__(self, app, pool: dict, deadline: float, seed: int, record):
        super().__init__(daemon=True)
        self.app, self.pool, self.deadline, self.record = app, pool, deadline, record
        self.rng = random.Random(seed)
        self.http = requests.Session()
        self.error: BaseException | None = None

    def call(self, op: str, method: str, path: str, **kw):
        r = self.http.request(method, self.app.base + path, auth=self.app.account.auth, verify=self.app.cert,
                              timeout=300, **kw)
        self.record(op, method, path, r)
        return r

    def volume(self, names) -> dict | None:
        r = self.call("find", "GET", "/api/volume", params={"name": self.rng.choice(names)})
        return r.json() if r.status_code == 200 else None

    def host(self) -> dict | None:
        r = self.call("find", "GET", "/api/host", params={"name": self.rng.choice(HOST_NAMES)})
        return r.json() if r.status_code == 200 else None

    def snapshot(self) -> dict | None:
        r = self.call("find", "GET", "/api/snapshot")
        mine = [s for s in r.json().get("snapshots", []) if s["name"] in SNAP_NAMES] if r.status_code == 200 else []
        return self.rng.choice(mine) if mine else None

    # The operations, weighted by how often a backup product does them.
    def op_create(self):
        if self.rng.random() < 0.6:
            body = {"name": self.rng.choice(FS_NAMES), "volume_type": "filesystem", "pool_id": self.pool["id"]}
        else:
            body = {"name": self.rng.choice(LUN_NAMES), "volume_type": "lun", "pool_id": self.pool["id"],
                    "size_total": 8 * MIB}
        self.call("create", "POST", "/api/volume", json=body)

    def op_delete(self):
        if v := self.volume(FS_NAMES + LUN_NAMES + CLONE_NAMES):
            self.call("delete", "DELETE", f"/api/volume/{v['id']}")

    def op_snapshot(self):
        if v := self.volume(FS_NAMES + LUN_NAMES + CLONE_NAMES):
            self.call("snapshot", "POST", f"/api/volume/{v['id']}/snapshot", json={"name": self.rng.choice(SNAP_NAMES)})

    def op_delete_snapshot(self):
        if s := self.snapshot():
            self.call("delete_snapshot", "DELETE", f"/api/snapshot/{s['id']}")

    def op_clone(self):
        if s := self.snapshot():
            self.call("clone", "POST", "/api/volume",
                      json={"name": self.rng.choice(CLONE_NAMES), "snapshot_id": s["id"]})

    def op_share(self):
        if v := self.volume(FS_NAMES + CLONE_NAMES):
            if self.rng.random() < 0.5:
                body = {"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"], "read_only": False}}
            else:
                body = {"share_type": "smb"}
            self.call("share", "POST", f"/api/volume/{v['id']}/share", json=body)

    def op_unshare(self):
        if v := self.volume(FS_NAMES + CLONE_NAMES):
            if self.rng.random() < 0.5:
                self.call("unshare", "DELETE", f"/api/volume/{v['id']}/share")
            elif v.get("share_id"):
                self.call("unshare", "DELETE", f"/api/share/{v['share_id']}")

    def op_map(self):
        v, h = self.volume(LUN_NAMES + CLONE_NAMES), self.host()
        if v and h:
            if self.rng.random() < 0.5:
                self.call("map", "POST", f"/api/host/{h['id']}", json={"action": "map", "vol_id": v["id"]})
            else:
                self.call("map", "POST", f"/api/volume/{v['id']}/map", json={"host_id": h["id"]})

    def op_unmap(self):
        v, h = self.volume(LUN_NAMES + CLONE_NAMES), self.host()
        if v and h:
            self.call("unmap", "POST", f"/api/host/{h['id']}", json={"action": "unmap", "vol_id": v["id"]})

    def op_host(self):
        name = self.rng.choice(HOST_NAMES)
        if self.rng.random() < 0.5:
            self.call("host_create", "POST", "/api/host", json={"name": name, "iqns": [IQN.format(name)]})
        elif h := self.host():
            self.call("host_delete", "DELETE", f"/api/host/{h['id']}")

    def op_read(self):
        path = self.rng.choice(["/api/volume", "/api/share", "/api/host", "/api/snapshot", "/api/target",
                                f"/api/pool/{self.pool['id']}"])
        self.call("read", "GET", path)

    OPS = [("op_create", 4), ("op_delete", 2), ("op_snapshot", 4), ("op_delete_snapshot", 2), ("op_clone", 3),
           ("op_share", 3), ("op_unshare", 2), ("op_map", 3), ("op_unmap", 2), ("op_host", 1), ("op_read", 2)]

    def run(self):
        names = [n for n, w in self.OPS for _ in range(w)]
        try:
            while time.monotonic() < self.deadline:
                getattr(self, self.rng.choice(names))()
        except BaseException as exc:  # a client that dies is a finding: reported by the test
            self.error = exc
        finally:
            self.http.close()


def run_clients(app, pool: dict, seconds: float) -> dict:
    lock = threading.Lock()
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []

    def record(op, method, path, r):
        kind = None
        if r.status_code != 200:
            try:
                body = r.json()
                kind = body["error"]["type"]
                ok_shape = set(body) == {"error"} and set(body["error"]) == {"message", "type"}
            except (ValueError, KeyError, TypeError):
                ok_shape = False
            if r.status_code not in DOCUMENTED or not ok_shape:
                with lock:
                    problems.append(f"{method} {path} ({op}): {r.status_code} {r.text[:300]}")
        if any(word in r.text for word in BAD_WORDS):
            with lock:
                problems.append(f"{method} {path} ({op}): {r.status_code} {r.text[:300]}")
        with lock:
            statuses[(op, r.status_code, kind)] += 1

    log_start = app.log_path.stat().st_size
    started = time.monotonic()
    deadline = started + seconds
    clients = [Client(app, pool, deadline, seed, record) for seed in range(CLIENTS)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(seconds + 600)
    elapsed = time.monotonic() - started
    assert not [c for c in clients if c.is_alive()], "clients still waiting 10 minutes after the deadline"
    errors = [f"{type(c.error).__name__}: {c.error}" for c in clients if c.error]
    with open(app.log_path, "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    bad_log = [line for line in log.splitlines()
               if any(word in line for word in BAD_WORDS) or re.search(r" -> 5\d\d in ", line)]
    total = sum(statuses.values())
    changes = sum(n for (op, status, _), n in statuses.items() if status == 200 and op not in ("find", "read"))
    summary = {"clients": CLIENTS, "seconds": round(elapsed, 1), "requests": total, "changes_done": changes,
               "statuses": {f"{op} {status} {kind or ''}".strip(): n for (op, status, kind), n in sorted(
                   statuses.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))}}
    print(f"\nconcurrency: {summary}")
    assert errors == [], errors[:5]
    assert problems == [], problems[:20]
    assert bad_log == [], bad_log[:20]
    # The run did fight: many changes went through and names clashed.
    assert total > CLIENTS * 5 and changes > 20, summary
    assert any(status == 409 for (_, status, _) in statuses), summary
    return summary


def assert_consistent(app, pool: dict) -> None:
    """The API and the real system agree, with no orphan on either side."""
    name = pool["name"]
    volumes = app.ok("GET", "/api/volume", params={"pool_id": pool["id"]}, headers=FRESH)["volumes"]
    details = {v["id"]: app.ok("GET", f"/api/volume/{v['id']}", headers=FRESH) for v in volumes}
    snapshots = [s for s in app.ok("GET", "/api/snapshot", headers=FRESH)["snapshots"] if s["parent_id"] in details]
    shares = {s["id"]: app.ok("GET", f"/api/share/{s['id']}", headers=FRESH)
              for s in app.ok("GET", "/api/share", headers=FRESH)["shares"]}
    shares = {i: s for i, s in shares.items() if s["vol_id"] in details}
    tree = zfs_tree(name)

    # ZFS == API: each dataset is a volume (stamped with its id), each snapshot a snapshot.
    datasets = {n: p for n, p in tree.items() if p["type"] == "filesystem" and n != name}
    assert {f"{name}/{v['name']}": v["id"] for v in volumes} == \
        {n: p["com.vsnap:vol_id"] for n, p in datasets.items()}
    by_id = {v["id"]: v for v in volumes}
    zfs_snaps = {n: p for n, p in tree.items() if p["type"] == "snapshot"}
    assert {f"{name}/{by_id[s['parent_id']]['name']}@{s['name']}": s["id"] for s in snapshots} == \
        {n: p["com.vsnap:snap_id"] for n, p in zfs_snaps.items()}
    for v in volumes:
        if v["volume_type"] == "lun":
            image = f"/vsnap/{name}/{v['name']}/vsnap-lun.img"
            assert os.path.getsize(image) == int(v["size_total"]), v

    # Shares == the NFS exports file and Samba's shares file (both ways, for this pool).
    nfs = {s["name"] for s in shares.values() if s["share_type"] == "nfs"}
    smb = {s["name"]: f"/vsnap/{name}/{details[s['vol_id']]['name']}" for s in shares.values()
           if s["share_type"] == "smb"}
    assert {p for p in nfs_exports().values() if p.startswith(f"/vsnap/{name}/")} == nfs
    assert {k: v for k, v in smb_shares().items() if v.strip().startswith(f"/vsnap/{name}/")} == smb
    for v in details.values():
        assert (v["share_id"] is not None) == any(s["vol_id"] == v["id"] for s in shares.values()), v

    # Mappings == tgt's targets: each host's target holds exactly its mapped LUNs' images.
    hosts = {h["id"]: app.ok("GET", f"/api/host/{h['id']}", headers=FRESH)
             for h in app.ok("GET", "/api/host", headers=FRESH)["hosts"] if h["name"] in HOST_NAMES}
    targets = {t["host_id"]: t["wwn"] for t in app.ok("GET", "/api/target", headers=FRESH)["targets"]}
    seen = {name: set(luns.values()) for name, (_, luns) in tgt_targets_by_name().items()}
    for hid, h in hosts.items():
        want = {f"/vsnap/{name}/{details[m['vol_id']]['name']}/vsnap-lun.img" for m in h["mapped_luns"]}
        got = {p for p in seen.get(targets.get(hid, "-"), set()) if p.startswith(f"/vsnap/{name}/")}
        assert got == want, (h, targets.get(hid))
    # ...and no target holds an image of this pool that no host of ours has mapped.
    mapped = {f"/vsnap/{name}/{details[m['vol_id']]['name']}/vsnap-lun.img"
              for h in hosts.values() for m in h["mapped_luns"]}
    everywhere = {p for luns in seen.values() for p in luns if p.startswith(f"/vsnap/{name}/")}
    assert everywhere == mapped
    for v in details.values():
        assert sorted(v["host_ids"]) == sorted(hid for hid, h in hosts.items()
                                               if any(m["vol_id"] == v["id"] for m in h["mapped_luns"])), v


def _run(appliance, world, seconds):
    summary = run_clients(appliance, world, seconds)
    assert_consistent(appliance, world)
    # A restart (which rebuilds exports and targets from the database) changes nothing.
    appliance.restart()
    assert_consistent(appliance, world)
    return summary


def test_fifty_clients_fight_over_shared_objects(appliance, world):
    _run(appliance, world, SHORT_SECONDS)


@pytest.mark.long
def test_fifty_clients_fight_over_shared_objects_long(appliance, world):
    _run(appliance, world, LONG_SECONDS)
