"""Crash consistency: SIGKILL of the whole server (the gunicorn master and its workers, as a
crash or `kill -9` of the service would) at every step of volume, clone, snapshot, share,
mapping, volume-delete and replication operations; after a restart the API and the real
system agree, with no orphan on either side, and nothing the user made is lost.

Kill points are deterministic: the server is started with VSNAP_FAULT_KILL_AFTER_COMMANDS=N
(the test-only crash injection in vsnap/faults.py), which kills its process group right
after the N-th system-changing step of the request (a zfs command, a tgtadm or LIO change, a
configuration file written, exportfs, a Samba reload). For each operation N runs 1, 2, ... until the
operation completes without being killed: that is its number of kill points. Kills after a
delay land between the steps (database commits). `make test` runs the first kill points of
each operation; the long mode (`-m long` or VSNAP_TEST_LONG=1) runs every one, and the delays.

What is checked after each restart (`audit`), with the system's own tools:
- ZFS datasets and snapshots of the test pool == GET /api/volume and /api/snapshot, each
  dataset stamped with its volume's id; each LUN's image at its size;
- the NFS exports file (ids, paths) == the NFS shares, and a surviving export is served
  (nfs-ls); Samba's shares.conf == the SMB shares;
- tgtadm's targets of this appliance (ACLs, LUNs and their backing files) == the hosts and
  their mappings; on the production stack (the kernel lab's guest) LIO's ACLs in configfs,
  each mapped LUN followed to its backstore's device;
- no replication session stays ACTIVE;
- a volume made before the operation, its share, a mapped LUN and the data written into
  both (sha256) are all still there.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import requests

from . import stack
from .stack import lun_device, size_of
from .system_state import lio_acls, nfs_exports, smb_shares, tgt_targets, zfs_tree
from .test_replication import (
    _pids,
    _thaw,
    checksums,
    pair,  # noqa: F401  a fixture, which pytest finds here by name
    partner_b,  # noqa: F401  a fixture (pair's), which pytest finds here by name
    relate,
    sha256,
    wait_session,
)
from .zfs_tools import PREFIX, unused

FAULT = "VSNAP_FAULT_KILL_AFTER_COMMANDS"
FRESH = {"Cache-Control": "no-cache"}  # reads right after outside changes: no kept catalog
MIB = 1 << 20
MAX_POINTS = 25  # an operation with more steps than this is a finding of its own
SHORT_POINTS = (1,)  # `make test`: the first kill point of every operation
DELAYS = (0.05, 0.2, 0.5)  # long mode: kills between the steps
KEEP_IQN = "iqn.2026-11.test.vsnap:crash-keep"
HOST_IQN = "iqn.2026-11.test.vsnap:crash-host"


def long_mode(config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    return os.environ.get("VSNAP_TEST_LONG", "") not in ("", "0") or \
        ("long" in markexpr and "not long" not in markexpr)


def write_random(path: str, size: int, offset: int = 0) -> None:
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(offset)
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


def nfs_ls(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nfs-ls", f"nfs://127.0.0.1{path}"], capture_output=True, text=True, timeout=30)


# -- the world every operation runs in ------------------------------------------------------------
@dataclass
class World:
    app: object
    pool: dict
    keep: dict  # a filesystem with data, shared over NFS, with a snapshot `base`
    keep_sha: str
    base_snap: dict
    keep_share: dict
    keeplun: dict  # a LUN with data, mapped to keephost
    keeplun_sha: str
    keephost: dict
    keep_lun_number: str
    cnfs: dict  # filesystems the share operations share and unshare
    csmb: dict
    cmap: dict  # a LUN the mapping operations map to `host`
    host: dict

    @property
    def pool_name(self) -> str:
        return self.pool["name"]

    def mount(self, name: str) -> str:
        return f"/vsnap/{self.pool_name}/{name}"


def _volume(app, pool, name, kind, **extra) -> dict:
    body = {"name": name, "volume_type": kind, "pool_id": pool["id"], **extra}
    return app.ok("POST", "/api/volume", json=body)


def _sweep(app, pool_id: str | None = None) -> None:
    """Removes what this module made (or an interrupted earlier run left): our hosts, our
    pool's volumes (clones first), the pool. A dataset NFS let go of a moment ago may still be
    busy in zfs-fuse: a refused delete is tried again."""
    for h in app.ok("GET", "/api/host", headers=FRESH)["hosts"]:
        if set(h["iqns"]) & {KEEP_IQN, HOST_IQN} or h["name"].startswith("crash-"):
            app.delete(f"/api/host/{h['id']}")
    if pool_id is None:
        return
    for _ in range(10):
        vols = app.ok("GET", "/api/volume", params={"pool_id": pool_id}, headers=FRESH)["volumes"]
        for v in sorted(vols, key=lambda v: (not v["is_clone"], v["volume_type"] != "filebackedlun")):
            app.delete(f"/api/volume/{v['id']}")
        if app.delete(f"/api/pool/{pool_id}").status_code in (200, 404):
            return
        time.sleep(2)
    raise AssertionError(f"pool {pool_id} could not be removed")


@pytest.fixture(scope="module", autouse=True)
def no_leftover_pool(appliance):
    """An interrupted earlier run's pool goes first (before the partner's fixture, which
    destroys the machine's test pools by name and would find this one busy)."""
    for p in appliance.ok("GET", "/api/pool")["pools"]:
        if p["name"] == f"{PREFIX}crash":
            _sweep(appliance, p["id"])


@pytest.fixture(scope="module")
def world(appliance):
    app = appliance
    app.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    _sweep(app)
    pool = app.ok("POST", "/api/pool", json={"name": f"{PREFIX}crash", "pool_type": "raid0",
                                             "disk_list": [d["uuid"] for d in unused(app, 1)]})
    try:
        keep = _volume(app, pool, "keep", "filesystem")
        path = f"/vsnap/{pool['name']}/keep/precious"
        write_random(path, MIB)
        base = app.ok("POST", f"/api/volume/{keep['id']}/snapshot", json={"name": "base"})
        share = app.ok("POST", f"/api/volume/{keep['id']}/share",
                       json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
        keeplun = _volume(app, pool, "keeplun", "lun", size_total=8 * MIB)
        image = lun_device(pool["name"], "keeplun")
        write_random(image, MIB, offset=MIB)
        keephost = app.ok("POST", "/api/host", json={"name": "crash-keephost", "iqns": [KEEP_IQN]})
        mapped = app.ok("POST", f"/api/volume/{keeplun['id']}/map", json={"host_id": keephost["id"]})
        w = World(app, pool, keep, sha256(path), base, share, keeplun, sha256(image), keephost, mapped["lun"],
                  _volume(app, pool, "cnfs", "filesystem"), _volume(app, pool, "csmb", "filesystem"),
                  _volume(app, pool, "cmap", "lun", size_total=4 * MIB),
                  app.ok("POST", "/api/host", json={"name": "crash-host", "iqns": [HOST_IQN]}))
        audit(w)
        yield w
    finally:
        app.extra_env.pop(FAULT, None)
        if app.proc is None or app.proc.poll() is not None:
            app.stop()
            app.start()
        _sweep(app, pool["id"])


# -- the check after every restart ----------------------------------------------------------------
def wait_for(check: Callable[[], bool], timeout: float, pause: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
    return True


def audit_pool(app, pool_row: dict) -> list[dict]:
    """ZFS datasets and snapshots of one pool == the API's volumes and snapshots in it, each
    stamped with its id; every object readable. Returns every volume the API lists."""
    pool = pool_row["name"]
    vols = app.ok("GET", "/api/volume", headers=FRESH)["volumes"]
    mine = {v["name"]: v for v in vols if v["pool_id"] == pool_row["id"]}
    tree = zfs_tree(pool)
    datasets = {n.split("/", 1)[1] for n in tree if n.count("/") == 1 and "@" not in n}
    api_datasets = {n for n, v in mine.items() if v["volume_type"] != "filebackedlun"}
    assert datasets == api_datasets, (f"orphan datasets: {sorted(datasets - api_datasets)}, "
                                      f"volumes without a dataset: {sorted(api_datasets - datasets)}")
    assert not [n for n in tree if n.count("/") > 1], f"unexpected nested datasets: {sorted(tree)}"
    for name, v in mine.items():
        assert tree[f"{pool}/{name}"]["com.vsnap:vol_id"] == v["id"], (name, tree[f"{pool}/{name}"])
        details = app.ok("GET", f"/api/volume/{v['id']}")  # no 500 for any object after a restart
        if v["volume_type"] == "lun":
            assert size_of(lun_device(pool, name)) == int(details["size_total"]), name
            assert details["serial"]
    by_id = {v["id"]: v for v in mine.values()}
    snaps = [s for s in app.ok("GET", "/api/snapshot", headers=FRESH)["snapshots"] if s["parent_id"] in by_id]
    api_snaps = {f"{pool}/{by_id[s['parent_id']]['name']}@{s['name']}": s for s in snaps}
    zfs_snaps = {n for n in tree if "@" in n}
    assert zfs_snaps == set(api_snaps), (f"orphan snapshots: {sorted(zfs_snaps - set(api_snaps))}, "
                                         f"snapshots without ZFS: {sorted(set(api_snaps) - zfs_snaps)}")
    for name, s in api_snaps.items():
        assert tree[name]["com.vsnap:snap_id"] in ("-", s["id"]), (name, tree[name])
        app.ok("GET", f"/api/snapshot/{s['id']}")
    return vols


def no_session_active(app) -> None:
    """The worker fails the sessions of a dead process at start: none stays ACTIVE."""
    assert wait_for(lambda: not [s for s in app.ok("GET", "/api/session")["sessions"] if s["status"] == "ACTIVE"],
                    60), app.ok("GET", "/api/session")["sessions"]


def audit(w: World) -> None:
    app = w.app
    vols = audit_pool(app, w.pool)
    # shares <-> the NFS exports file and Samba's shares
    everything = {v["id"]: v for v in vols}
    shares = app.ok("GET", "/api/share", headers=FRESH)["shares"]
    assert all(s["vol_id"] in everything for s in shares), shares
    assert nfs_exports() == {int(s["id"]): s["name"] for s in shares if s["share_type"] == "nfs"}
    expected_smb = {}
    for s in shares:
        if s["share_type"] == "smb":
            v = app.ok("GET", f"/api/volume/{s['vol_id']}")
            expected_smb[s["name"]] = f"/vsnap/{v['pool_name']}/{v['name']}"
    assert smb_shares() == expected_smb
    # hosts and mappings <-> tgt's targets (one per host), or LIO's ACLs (one per initiator)
    wanted = {}
    for h in app.ok("GET", "/api/host")["hosts"]:
        details = app.ok("GET", f"/api/host/{h['id']}")
        luns = {}
        for m in details["mapped_luns"]:
            v = app.ok("GET", f"/api/volume/{m['vol_id']}")
            assert v["volume_type"] == "lun", v  # this module maps only LUN volumes
            luns[int(m["lun"])] = lun_device(v["pool_name"], v["name"])
        wanted[int(h["id"])] = (set(h["iqns"]), luns)
    if stack.KERNEL:
        assert lio_acls() == {iqn.lower(): luns for iqns, luns in wanted.values() for iqn in iqns}
    else:
        assert tgt_targets() == wanted
    no_session_active(app)
    # what the user made before the operation
    keep = app.ok("GET", f"/api/volume/{w.keep['id']}")
    assert (keep["name"], keep["share_id"]) == ("keep", w.keep_share["id"])
    assert sha256(f"{w.mount('keep')}/precious") == w.keep_sha
    assert app.ok("GET", f"/api/snapshot/{w.base_snap['id']}")["version_id"] == w.base_snap["version_id"]
    assert sha256(lun_device(w.pool_name, "keeplun")) == w.keeplun_sha
    mapped = app.ok("GET", f"/api/host/{w.keephost['id']}")["mapped_luns"]
    assert mapped == [{"lun": w.keep_lun_number, "vol_id": w.keeplun["id"]}]
    export = w.keep_share["name"]
    assert wait_for(lambda: "precious" in nfs_ls(export).stdout, 15), nfs_ls(export)


# -- killing ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    killed: bool
    response: requests.Response | None


def own_listener(app) -> bool:
    """The port is this server's: not another one's (e.g. one left running by an interrupted
    run on the same state), which would answer in its place, unarmed."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{app.port}"], capture_output=True, text=True,
                         timeout=30).stdout
    return app.proc is not None and f"pid={app.proc.pid}," in out


def restart(app, fault: int | None = None) -> None:
    app.stop(signal.SIGKILL)  # a crash while idle: recovery must cope with that too (and it is quick)
    if fault is None:
        app.extra_env.pop(FAULT, None)
    else:
        app.extra_env[FAULT] = str(fault)
    app.start()
    assert wait_for(lambda: own_listener(app), 10), \
        f"port {app.port} is held by another process, not by the server just started:\n{app.log_tail(5)}"


def run_with_fault(app, n: int, method: str, path: str, body) -> Outcome:
    """Runs the request on a server armed to kill itself after its n-th step; returns with
    a normal server running again."""
    restart(app, n)
    try:
        response = app.request(method, path, json=body, timeout=120)
    except requests.RequestException:
        response = None
    killed = app.proc.poll() is not None or wait_for(lambda: app.proc.poll() is not None, 1, 0.05)
    if killed:
        assert app.proc.returncode == -signal.SIGKILL, app.log_tail()
    else:
        assert response is not None and response.status_code == 200, \
            f"{method} {path} on an armed server: {response.status_code if response else None} " \
            f"{response.text if response else ''}\n{app.log_tail()}"
    restart(app)
    return Outcome(killed, response)


def run_with_delay(app, delay: float, method: str, path: str, body) -> Outcome:
    """Sends the request and SIGKILLs the server's process group after `delay` seconds."""
    response = app.kill_during(method, path, body, delay)
    done = response is not None and response.status_code == 200
    if response is not None and not done:
        raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")
    return Outcome(not done, response)


# -- replication: a session in flight (first: the partner's fixture sweeps the machine's test
#    pools by name, which must not meet this module's other pool) ------------------------------
def _receiving(snap_name: str, timeout: float = 60) -> tuple[int, int]:
    """The partner's side of the stream of that snapshot, once it runs: (the sshd session
    process that carries it, the process group of the forced command and its zfs receive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _pids("vsnap.worker.serve"):
            try:
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                pgid = os.getpgid(pid)
            except (OSError, ValueError, IndexError):
                continue
            if any(e.startswith(b"SSH_ORIGINAL_COMMAND=recv ") and e.split()[2] == snap_name.encode()
                   for e in environ):
                return ppid, pgid
        time.sleep(0.05)
    raise AssertionError(f"no receive of {snap_name} appeared")


def _snapshot_guids(dataset: str) -> dict[str, str]:
    out = subprocess.run(["zfs", "get", "-Hp", "-r", "-o", "name,value", "guid", dataset],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {n.split("@", 1)[1]: g for n, g in (line.split("\t") for line in out.splitlines()) if "@" in n}


@pytest.fixture
def repl(pair):  # noqa: F811  pair: the imported fixture
    """A volume on A with data, its relationship to B and a first (full) session done."""
    a = pair["a"]
    made = []
    # The machine's one zfs-fuse is shared and may be busy: a stall limit of 5 s (the suite's)
    # would fail sessions that are merely slow, which is not what this test is about.
    stall = a.extra_env.get("VSNAP_REPL_STALL_SECONDS")
    a.extra_env["VSNAP_REPL_STALL_SECONDS"] = "60"
    restart(a)

    def create(name: str) -> dict:
        vol = a.ok("POST", "/api/volume", json={"name": name, "volume_type": "filesystem",
                                                 "pool_id": pair["pool_a"]["id"]})
        made.append(vol)
        src = f"/vsnap/{pair['pool_a']['name']}/{name}"
        write_random(f"{src}/f", 4 * MIB)
        rel = relate(pair, vol)
        first = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={})
        assert wait_session(a, first["id"])["status"] == "COMPLETED"
        write_random(f"{src}/g", 8 * MIB)  # what the session under test carries
        return {"vol": vol, "rel": rel, "src": src, "replica": f"{pair['pool_b']['name']}/{name}_replica"}

    yield create
    for server in (pair["a"], pair["b"]):
        server.extra_env.pop(FAULT, None)
        if server.proc is None or server.proc.poll() is not None:
            server.stop()
            server.start()
    for rel in a.ok("GET", "/api/relationship")["relationships"]:
        a.delete(f"/api/relationship/{rel['id']}")
    for vol in made:
        a.delete(f"/api/volume/{vol['id']}")
    if stall is None:
        a.extra_env.pop("VSNAP_REPL_STALL_SECONDS", None)
    else:
        a.extra_env["VSNAP_REPL_STALL_SECONDS"] = stall
    a.stop()
    a.start()


def audit_replication(pair, r: dict) -> None:  # noqa: F811  pair: the pair fixture's value
    """A and B each agree with their ZFS; no session ACTIVE; the replica holds only whole
    snapshots of the primary (same guids); the next session completes and the replica then
    equals the primary's data."""
    a, b = pair["a"], pair["b"]
    audit_pool(a, pair["pool_a"])
    audit_pool(b, pair["pool_b"])
    no_session_active(a)
    primary = _snapshot_guids(f"{pair['pool_a']['name']}/{r['vol']['name']}")
    replica = _snapshot_guids(r["replica"])
    # By guid: a session may name the replica's snapshot (remote_snap_name) unlike the primary's.
    assert replica and set(replica.values()) <= set(primary.values()), (primary, replica)
    # After a partner-side kill, zfs-fuse's daemon (not the killed `zfs receive`) may still be
    # winding the old receive down, and a session meanwhile may see no data move. Such a
    # session must fail cleanly, and a next one must complete. (The 60 s stalls first blamed on
    # this were a stale pyenv lock in root's ~/.bashrc; see lab.sh's sshd_config.)
    for attempt in range(3):
        again = a.ok("POST", f"/api/relationship/{r['rel']['id']}/session", json={})
        done = wait_session(a, again["id"])
        if done["status"] == "COMPLETED" or "stalled" not in (done["message"] or ""):
            break
        time.sleep(5)
    assert done["status"] == "COMPLETED", done
    assert checksums(f"/vsnap/{r['replica']}") == checksums(r["src"])
    audit_pool(b, pair["pool_b"])


def _start(pair, r, snap_name):  # noqa: F811  pair: the pair fixture's value
    return pair["a"].ok("POST", f"/api/relationship/{r['rel']['id']}/session", json={"remote_snap_name": snap_name})


def kill_session_at_step(pair, r, n: int) -> bool:  # noqa: F811  pair: the pair fixture's value
    """The primary armed to die after step n of starting a session (its snapshot)."""
    a = pair["a"]
    path = f"/api/relationship/{r['rel']['id']}/session"
    outcome = run_with_fault(a, n, "POST", path, {"remote_snap_name": f"step{n}"})
    if not outcome.killed:
        wait_session(a, outcome.response.json()["id"])
    return outcome.killed


def kill_primary_in_flight(pair, r) -> None:  # noqa: F811  pair: the pair fixture's value
    """The stream is held on B's side; the primary (server, worker, zfs send, ssh) dies."""
    s = _start(pair, r, "inflight")
    sshd, _ = _receiving("inflight")
    os.kill(sshd, signal.SIGSTOP)
    try:
        assert wait_session(pair["a"], s["id"], ("ACTIVE",))["status"] == "ACTIVE"
        pair["a"].stop(signal.SIGKILL)
    finally:
        _thaw([sshd])
        pair["a"].start()
    ended = wait_session(pair["a"], s["id"], timeout=60)
    assert ended["status"] == "FAILED", ended


def kill_receiver_in_flight(pair, r, primary_too: bool) -> None:  # noqa: F811  pair: the pair fixture's value
    """B's receiving side (the forced command and its zfs receive) dies mid-stream, alone or
    together with the primary (both machines crash)."""
    a = pair["a"]
    s = _start(pair, r, "rkill")
    sshd, pgid = _receiving("rkill")
    os.kill(sshd, signal.SIGSTOP)
    try:
        assert wait_session(a, s["id"], ("ACTIVE",))["status"] == "ACTIVE"
        os.killpg(pgid, signal.SIGKILL)
        if primary_too:
            a.stop(signal.SIGKILL)
    finally:
        _thaw([sshd])
        if primary_too:
            a.start()
    ended = wait_session(a, s["id"], timeout=90)
    assert ended["status"] == "FAILED", ended


def kill_primary_after(pair, r, delay: float) -> str:  # noqa: F811  pair: the pair fixture's value
    a = pair["a"]
    s = _start(pair, r, f"d{int(delay * 1000)}")
    time.sleep(delay)
    a.stop(signal.SIGKILL)
    a.start()
    return wait_session(a, s["id"], timeout=60)["status"]


REPL_SHORT = ("step", "receiver-and-primary")
REPL_LONG = ("every-step", "primary-in-flight", "receiver", "delays")


@pytest.mark.parametrize("variant", [*REPL_SHORT, *(pytest.param(v, marks=pytest.mark.long) for v in REPL_LONG)])
def test_kill_during_a_replication_session(pair, repl, variant, request):  # noqa: F811  pair: the imported fixture
    if variant in REPL_LONG and not long_mode(request.config):
        pytest.skip("runs in the long mode (make test-long)")
    started = time.monotonic()
    r = repl(f"crep{(REPL_SHORT + REPL_LONG).index(variant)}")
    points = 0
    if variant in ("step", "every-step"):
        for n in range(1, MAX_POINTS + 1 if variant == "every-step" else 2):
            if not kill_session_at_step(pair, r, n):
                break
            points += 1
            audit_replication(pair, r)
        assert points >= 1
    elif variant == "primary-in-flight":
        kill_primary_in_flight(pair, r)
        points = 1
    elif variant in ("receiver", "receiver-and-primary"):
        kill_receiver_in_flight(pair, r, variant == "receiver-and-primary")
        points = 1
    else:
        outcomes = [kill_primary_after(pair, r, d) for d in (0.0, 0.3, 1.0)]
        assert set(outcomes) <= {"COMPLETED", "FAILED"}, outcomes
        points = len(outcomes)
    audit_replication(pair, r)
    print(f"\nreplication/{variant}: {points} kill points in {time.monotonic() - started:.1f} s")


# -- a relationship delete, killed on either side ---------------------------------------------------
def _has_relationship(app, rel_id: str) -> bool:
    r = app.get(f"/api/relationship/{rel_id}")
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def _deletes_in_flight(app) -> int:
    """Relationship rows still marked deleting (the intent record; not in the API)."""
    with sqlite3.connect(f"file:{app.state / 'vsnap.db'}?mode=ro", uri=True, timeout=30) as db:
        return db.execute("SELECT count(*) FROM relationship WHERE state = 'deleting'").fetchone()[0]


def audit_relationship_delete(pair, r: dict, preserve: bool) -> bool:  # noqa: F811  pair: the pair fixture's value
    """Once the primary's worker has finished or rolled back an interrupted delete: both sides
    agree whether the relationship exists, each agrees with its ZFS, and no replica is left
    unknown (gone with the relationship, unless kept on purpose; else still replicating, with
    the data intact). Returns whether the relationship is gone."""
    a, b = pair["a"], pair["b"]
    rel_id = r["rel"]["id"]
    settled = wait_for(lambda: _deletes_in_flight(a) == 0 and _has_relationship(a, rel_id) ==
                       _has_relationship(b, rel_id), 90)
    assert settled, (_deletes_in_flight(a), _has_relationship(a, rel_id), _has_relationship(b, rel_id),
                     a.log_tail(20))
    audit_pool(a, pair["pool_a"])
    audit_pool(b, pair["pool_b"])
    pool_b = pair["pool_b"]["name"]
    replica_left = r["replica"] in zfs_tree(pool_b)
    if not _has_relationship(a, rel_id):
        assert replica_left == preserve, (r["replica"], replica_left)
        return True
    assert replica_left
    no_session_active(a)
    again = a.ok("POST", f"/api/relationship/{rel_id}/session", json={})
    assert wait_session(a, again["id"])["status"] == "COMPLETED"
    assert checksums(f"/vsnap/{r['replica']}") == checksums(r["src"])
    return False


REL_DELETE_SHORT = (("primary", False), ("partner", False))
REL_DELETE_LONG = (("primary", True),)  # keeping the replica, the partner changes only its database


@pytest.mark.parametrize("side, preserve", [*REL_DELETE_SHORT,
                                            *(pytest.param(*v, marks=pytest.mark.long) for v in REL_DELETE_LONG)])
def test_kill_during_a_relationship_delete(pair, repl, side, preserve, request):  # noqa: F811  pair: the imported fixture
    """kill -9 of the primary or of the partner after each step of DELETE /api/relationship:
    afterwards both sides agree and no replica is orphaned."""
    long = long_mode(request.config)
    if (side, preserve) in REL_DELETE_LONG and not long:
        pytest.skip("runs in the long mode (make test-long)")
    a, b = pair["a"], pair["b"]
    victim = a if side == "primary" else b
    a.extra_env["VSNAP_PARTNER_NOTICE_INTERVAL"] = "1"  # an interrupted delete is settled within seconds
    try:
        params = {"preserve_replica": "true"} if preserve else {}
        points = 0
        # Each kill point on a relationship of its own (a kill's recovery may finish the
        # delete): n = 1, 2, ... until a delete completes unkilled (the short run: n = 1).
        for n in range(1, (MAX_POINTS if long else max(SHORT_POINTS)) + 1):
            r = repl(f"crdel{side[0]}{int(preserve)}n{n}")
            restart(victim, n)
            try:
                answer = a.delete(f"/api/relationship/{r['rel']['id']}", params=params, timeout=120)
            except requests.RequestException:
                answer = None  # the primary died under the request
            killed = victim.proc.poll() is not None or wait_for(lambda: victim.proc.poll() is not None, 1, 0.05)
            restart(victim)
            if side == "partner" and a.proc.poll() is not None:
                a.start()
            gone = audit_relationship_delete(pair, r, preserve)
            if not killed:
                assert answer is not None and answer.status_code == 200 and gone, \
                    (answer.status_code if answer is not None else None, answer.text if answer is not None else "")
                break
            points += 1
            if not gone:  # the delete was rolled back: it goes through now
                a.ok("DELETE", f"/api/relationship/{r['rel']['id']}", params=params)
                assert audit_relationship_delete(pair, r, preserve)
        assert points >= 1
        print(f"\nrelationship delete/{side}/preserve={preserve}: {points} kill points")
    finally:
        a.extra_env.pop("VSNAP_PARTNER_NOTICE_INTERVAL", None)
        if preserve:  # the kept replica is the partner's to delete: its relationship went
            for v in b.ok("GET", "/api/volume")["volumes"]:
                if v["name"].startswith("crdel"):
                    b.delete(f"/api/volume/{v['id']}")


# -- the operations -------------------------------------------------------------------------------
def _find(app, path: str, key: str, name: str, **params) -> dict | None:
    for item in app.ok("GET", path, params=params, headers=FRESH)[key]:
        if item["name"] == name:
            return item
    return None


def _volume_named(w, name):
    found = _find(w.app, "/api/volume", "volumes", name)
    return found if found and found["pool_id"] == w.pool["id"] else None


def _snapshot_named(w, vol, name):
    return _find(w.app, f"/api/volume/{vol['id']}/snapshot", "snapshots", name)


def _share_of(w, vol):
    details = w.app.ok("GET", f"/api/volume/{vol['id']}", headers=FRESH)
    return details["share_id"]


def _mapped(w, host, vol) -> bool:
    return any(m["vol_id"] == vol["id"] for m in w.app.ok("GET", f"/api/host/{host['id']}")["mapped_luns"])


class Op:
    """One operation: what it needs made first, the request, and what must hold after it was
    killed (`done`: the request completed) and after the audit."""

    name = ""

    def setup(self, w: World) -> dict:
        return {}

    def request(self, w: World, st: dict) -> tuple[str, str, dict | None]:
        raise NotImplementedError

    def check(self, w: World, st: dict, done: bool) -> None:
        pass

    def cleanup(self, w: World, st: dict) -> None:
        pass


class CreateVolume(Op):
    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"create-{kind}"
        self.vol = f"c{kind[:3]}"

    def request(self, w, st):
        body = {"name": self.vol, "volume_type": self.kind, "pool_id": w.pool["id"], "size_total": 8 * MIB}
        return "POST", "/api/volume", body

    def check(self, w, st, done):
        v = _volume_named(w, self.vol)
        assert v or not done, "the create answered, but the volume is gone"
        if v:  # whole
            assert v["size_total"] == str(8 * MIB), v
            if self.kind == "filesystem":
                write_random(f"{w.mount(self.vol)}/f", 4096)  # usable

    def cleanup(self, w, st):
        if v := _volume_named(w, self.vol):
            w.app.ok("DELETE", f"/api/volume/{v['id']}")


class Clone(Op):
    name = "clone"

    def request(self, w, st):
        return "POST", "/api/volume", {"name": "cclone", "snapshot_id": w.base_snap["id"]}

    def check(self, w, st, done):
        v = _volume_named(w, "cclone")
        assert v or not done
        assert w.app.ok("GET", f"/api/snapshot/{w.base_snap['id']}")["has_clones"] == bool(v)
        if v:
            assert v["is_clone"] and sha256(f"{w.mount('cclone')}/precious") == w.keep_sha

    def cleanup(self, w, st):
        if v := _volume_named(w, "cclone"):
            w.app.ok("DELETE", f"/api/volume/{v['id']}")


class CreateSnapshot(Op):
    name = "snapshot-create"

    def request(self, w, st):
        return "POST", f"/api/volume/{w.keep['id']}/snapshot", {"name": "csnap"}

    def check(self, w, st, done):
        s = _snapshot_named(w, w.keep, "csnap")
        assert s or not done
        if s:
            assert w.app.ok("GET", f"/api/snapshot/{s['id']}")["version_id"]

    def cleanup(self, w, st):
        if s := _snapshot_named(w, w.keep, "csnap"):
            w.app.ok("DELETE", f"/api/snapshot/{s['id']}")


class DeleteSnapshot(CreateSnapshot):
    name = "snapshot-delete"

    def setup(self, w):
        return {"snap": w.app.ok("POST", f"/api/volume/{w.keep['id']}/snapshot", json={"name": "csnap"})}

    def request(self, w, st):
        return "DELETE", f"/api/snapshot/{st['snap']['id']}", None

    def check(self, w, st, done):
        s = _snapshot_named(w, w.keep, "csnap")
        assert not (s and done), "the delete answered, but the snapshot is still there"
        if s:
            assert s["id"] == st["snap"]["id"]


class CreateShare(Op):
    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"share-create-{kind}"

    def volume(self, w):
        return w.cnfs if self.kind == "nfs" else w.csmb

    def body(self):
        return {"share_type": self.kind,
                "share_options": {"allowed_hosts": ["127.0.0.1"]} if self.kind == "nfs" else {}}

    def request(self, w, st):
        return "POST", f"/api/volume/{self.volume(w)['id']}/share", self.body()

    def check(self, w, st, done):
        share_id = _share_of(w, self.volume(w))
        assert share_id or not done
        if share_id and self.kind == "nfs":
            path = w.app.ok("GET", f"/api/share/{share_id}")["name"]
            assert wait_for(lambda: nfs_ls(path).returncode == 0, 15), nfs_ls(path)

    def cleanup(self, w, st):
        if _share_of(w, self.volume(w)):
            w.app.ok("DELETE", f"/api/volume/{self.volume(w)['id']}/share")


class DeleteShare(CreateShare):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.name = f"share-delete-{kind}"

    def setup(self, w):
        return {"share": w.app.ok("POST", f"/api/volume/{self.volume(w)['id']}/share", json=self.body())}

    def request(self, w, st):
        return "DELETE", f"/api/share/{st['share']['id']}", None

    def check(self, w, st, done):
        share_id = _share_of(w, self.volume(w))
        assert not (share_id and done)
        assert share_id in (None, st["share"]["id"])


class Map(Op):
    name = "map"

    def request(self, w, st):
        return "POST", f"/api/volume/{w.cmap['id']}/map", {"host_id": w.host["id"]}

    def check(self, w, st, done):
        assert _mapped(w, w.host, w.cmap) or not done

    def cleanup(self, w, st):
        if _mapped(w, w.host, w.cmap):
            w.app.ok("POST", f"/api/host/{w.host['id']}", json={"action": "unmap", "vol_id": w.cmap["id"]})


class Unmap(Map):
    name = "unmap"

    def setup(self, w):
        return w.app.ok("POST", f"/api/volume/{w.cmap['id']}/map", json={"host_id": w.host["id"]})

    def request(self, w, st):
        return "POST", f"/api/host/{w.host['id']}", {"action": "unmap", "vol_id": w.cmap["id"]}

    def check(self, w, st, done):
        assert not (_mapped(w, w.host, w.cmap) and done)


class DeleteShared(Op):
    """Deletes a filesystem shared over NFS, or a LUN mapped to a host, with data in it."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"delete-{'shared-filesystem' if kind == 'filesystem' else 'mapped-lun'}"
        self.vol = "cdfs" if kind == "filesystem" else "cdlun"

    def setup(self, w):
        v = _volume(w.app, w.pool, self.vol, self.kind, **({"size_total": 4 * MIB} if self.kind == "lun" else {}))
        if self.kind == "filesystem":
            path = f"{w.mount(self.vol)}/data"
            w.app.ok("POST", f"/api/volume/{v['id']}/share",
                     json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
        else:
            path = lun_device(w.pool_name, self.vol)
            w.app.ok("POST", f"/api/volume/{v['id']}/map", json={"host_id": w.host["id"]})
        write_random(path, 64 * 1024)
        return {"vol": v, "path": path, "sha": sha256(path)}

    def request(self, w, st):
        return "DELETE", f"/api/volume/{st['vol']['id']}", None

    def check(self, w, st, done):
        v = _volume_named(w, self.vol)
        assert not (v and done)
        if v:  # not deleted: whole, with its data and still shared or mapped (those go only
            # once the volume is marked for deletion, and a restart then finishes the delete)
            assert v["id"] == st["vol"]["id"] and sha256(st["path"]) == st["sha"]
            assert (v["share_id"] is not None) if self.kind == "filesystem" else v["host_ids"] == [w.host["id"]], v

    def cleanup(self, w, st):
        if v := _volume_named(w, self.vol):
            w.app.ok("DELETE", f"/api/volume/{v['id']}")


OPS = [CreateVolume("filesystem"), CreateVolume("lun"), Clone(), CreateSnapshot(), DeleteSnapshot(),
       CreateShare("nfs"), DeleteShare("nfs"), CreateShare("smb"), DeleteShare("smb"), Map(), Unmap(),
       DeleteShared("filesystem"), DeleteShared("lun")]
FIGURES: dict[str, dict] = {}


def crash_once(w: World, op: Op, *, point: int | None = None, delay: float | None = None) -> bool:
    """One kill of `op` at a step (`point`) or after a delay; checks and cleans up. Returns
    whether the server was killed (False: the operation completed first)."""
    st = op.setup(w)
    method, path, body = op.request(w, st)
    outcome = run_with_fault(w.app, point, method, path, body) if point is not None \
        else run_with_delay(w.app, delay, method, path, body)
    where = f"{op.name} killed {'after step %s' % point if point is not None else 'after %ss' % delay}"
    try:
        op.check(w, st, not outcome.killed)
        audit(w)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}\n--- server log ---\n{w.app.log_tail(60)}") from exc
    op.cleanup(w, st)
    return outcome.killed


def sweep(w: World, op: Op, points) -> int:
    """Kills `op` at each step in `points` until it completes; returns the kill points hit."""
    hit = 0
    for n in points:
        if not crash_once(w, op, point=n):
            break
        hit += 1
    else:
        if points is not SHORT_POINTS:
            pytest.fail(f"{op.name} was still being killed after {MAX_POINTS} steps")
    return hit


@pytest.mark.guest
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_kill_at_the_first_steps(world, op, record_property):
    started = time.monotonic()
    hit = sweep(world, op, SHORT_POINTS)
    audit(world)  # after the clean-up too
    assert hit >= 1, f"{op.name} took no system-changing step: the fault point never fired"
    record_property("kill_points", hit)
    print(f"\n{op.name}: {hit} kill points in {time.monotonic() - started:.1f} s")


@pytest.mark.long
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_kill_at_every_step_and_between(world, op, request, record_property):
    if not long_mode(request.config):
        pytest.skip("the exhaustive sweep runs in the long mode (make test-long)")
    started = time.monotonic()
    hit = sweep(world, op, range(1, MAX_POINTS + 1))
    killed_by_delay = sum(crash_once(world, op, delay=d) for d in DELAYS)
    audit(world)  # after the last clean-up too
    record_property("kill_points", hit)
    print(f"\n{op.name}: {hit} kill points (all steps), {killed_by_delay}/{len(DELAYS)} delayed kills "
          f"landed, in {time.monotonic() - started:.1f} s")
