"""Replication between two real appliances on this machine (own state directories, API and
sshd ports, pools), checked with zfs list and checksums of the data on both sides."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import stack
from .appliance import Appliance
from .conftest import STATE, sweep_test_pools
from .stack import lun_device, write_at
from .zfs_tools import PREFIX, destroy_dataset, unused

ROOT = Path(__file__).resolve().parents[2]
STATE_B = Path(os.environ.get("VSNAP_STATE_B", "/var/lib/vsnap-test-b"))
PORT_B = int(os.environ.get("VSNAP_PORT_B", "8920"))
SSH_PORT_B = int(os.environ.get("VSNAP_SSH_PORT_B", "8942"))
MIB = 1 << 20


@pytest.fixture(scope="module")
def partner_b(appliance, admin):
    if not (STATE_B / "lab" / "lab.env").exists():
        pytest.fail(f"the partner's lab is not set up for {STATE_B}: run the suite with `make test`")
    server = Appliance(STATE_B, PORT_B, ssh_port=SSH_PORT_B, log_name="server-b",
                       env={"VSNAP_AUTH_FAIL_LIMIT": "100000",
                            "VSNAP_REPL_STALL_SECONDS": stack.REPL_STALL_SECONDS}).start()
    server.account = admin
    try:
        sweep_test_pools(server, machine_wide=False)  # A's pools are A's (the session start swept)
        yield server
    finally:
        server.stop()


def _forget_everything(server) -> None:
    for rel in server.ok("GET", "/api/relationship")["relationships"]:
        server.delete(f"/api/relationship/{rel['id']}")
    for partner in server.ok("GET", "/api/partner")["partners"]:
        server.delete(f"/api/partner/{partner['id']}")


@pytest.fixture(scope="module")
def pair(appliance, partner_b, admin):
    """A and B partnered, each with a test pool."""
    for server in (appliance, partner_b):
        _forget_everything(server)
        server.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    pool_a = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}repa", "pool_type": "raid0",
                                                     "disk_list": [d["uuid"] for d in unused(appliance, 2)]})
    pool_b = partner_b.ok("POST", "/api/pool", json={"name": f"{PREFIX}repb", "pool_type": "raid0",
                                                     "disk_list": [d["uuid"] for d in unused(partner_b, 2)]})
    partner = appliance.ok("POST", "/api/partner", json={
        "remote_addr": "127.0.0.1", "remote_user": admin.name, "remote_pass": admin.password,
        "remote_api_port": PORT_B, "local_addr": None, "local_api_port": None, "remote_ssh_port": None})
    yield {"a": appliance, "b": partner_b, "pool_a": pool_a, "pool_b": pool_b, "partner": partner}
    for server in (appliance, partner_b):
        _forget_everything(server)
    appliance.delete(f"/api/pool/{pool_a['id']}")
    partner_b.delete(f"/api/pool/{pool_b['id']}")


@pytest.fixture
def volume(pair):
    """Makes volumes on A (filesystems unless told); their relationships and the volumes go
    afterwards."""
    made = []

    def create(name, volume_type="filesystem", **extra):
        v = pair["a"].ok("POST", "/api/volume", json={"name": name, "volume_type": volume_type,
                                                       "pool_id": pair["pool_a"]["id"], **extra})
        made.append(v)
        return v

    yield create
    for server in (pair["a"], pair["b"]):
        for rel in server.ok("GET", "/api/relationship")["relationships"]:
            server.delete(f"/api/relationship/{rel['id']}")
    for v in made:
        pair["a"].delete(f"/api/volume/{v['id']}")


def zfs_names(pool: str, kind: str = "all") -> set[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", kind, "-r", pool],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def write(path: str, size: int, offset: int = 0) -> None:
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(offset)
        f.write(os.urandom(size))


def sha256(path: str) -> str:
    """Of a file's or a block device's whole content."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def checksums(root: str) -> dict[str, str]:
    result = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            result[os.path.relpath(path, root)] = sha256(path)
    return result


def wait_session(server, session_id: str, statuses=("COMPLETED", "FAILED"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = server.ok("GET", f"/api/session/{session_id}")
        if s["status"] in statuses or time.monotonic() > deadline:
            return s
        time.sleep(0.3)


def replicate(pair, rel_id: str, **body) -> dict:
    s = pair["a"].ok("POST", f"/api/relationship/{rel_id}/session", json=body)
    assert s["status"] in ("PENDING", "ACTIVE") and s["rel_id"] == rel_id
    return wait_session(pair["a"], s["id"])


def relate(pair, vol: dict, **extra) -> dict:
    return pair["a"].ok("POST", f"/api/volume/{vol['id']}/relationship",
                        json={"partner_id": pair["partner"]["id"], **extra})


def replicated(pair, volume, name: str, size: int) -> tuple[dict, str, dict, dict]:
    """A filesystem volume on A holding `size` bytes, its relationship to B and a first session
    that completed: (volume, its directory, relationship, session)."""
    vol = volume(name)
    src = f"/vsnap/{pair['pool_a']['name']}/{name}"
    write(f"{src}/f", size)
    rel = relate(pair, vol)
    done = replicate(pair, rel["id"])
    assert done["status"] == "COMPLETED", done
    return vol, src, rel, done


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


# -- partners -----------------------------------------------------------------------------------
@pytest.mark.guest
def test_partners_list_each_other_under_one_id_and_no_password_is_kept(pair, admin):
    a, b, partner = pair["a"], pair["b"], pair["partner"]
    assert (partner["address"], partner["api_port"], partner["ssh_port"]) == ("127.0.0.1", str(PORT_B),
                                                                             str(SSH_PORT_B))
    assert set(partner) == {"id", "address", "api_port", "ssh_port", "time_created", "time_updated"}
    [seen_by_b] = b.ok("GET", "/api/partner")["partners"]
    assert seen_by_b["id"] == partner["id"] and seen_by_b["api_port"] == str(a.port)
    # The details add whether the partnership works, asked of the partner now.
    assert a.ok("GET", f"/api/partner/{partner['id']}") == {**partner, "trust_status": "OK", "trust_message": None}
    assert a.ok("GET", "/api/partner")["total"] == 1
    # Each side's sshd lets the other's key in, forced onto the replication command.
    for state in (STATE, STATE_B):
        keys = (state / "ssh" / "authorized_keys").read_text()
        assert f"vsnap-partner:{partner['id']}" in keys and 'restrict,command="' in keys
    # The password was used once and is nowhere on disk: not in either state directory (the
    # databases, keys, logs) nor in the servers' logs.
    secret = admin.password.encode()
    for state in (STATE, STATE_B):
        for dirpath, _, files in os.walk(state):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and os.path.getsize(path) < 256 * MIB:
                    with open(path, "rb") as f:
                        assert secret not in f.read(), path


def test_partner_errors(pair, admin):
    a = pair["a"]
    r = a.post("/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": admin.name,
                                     "remote_pass": "wrong-" + admin.password, "remote_api_port": PORT_B})
    assert r.status_code == 400 and r.json()["error"]["type"] == "ValidationError"
    for bad in ("-oProxyCommand=touch /tmp/x", "a b", "", "127.0.0.1;reboot"):
        r = a.post("/api/partner", json={"remote_addr": bad, "remote_user": admin.name, "remote_pass": "x"})
        assert r.status_code == 400, (bad, r.text)
    r = a.post("/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": admin.name,
                                     "remote_pass": admin.password, "remote_api_port": 1})
    # nothing answers at the client's address and port: the client's to fix, not a 5xx
    assert r.status_code == 400 and "cannot be reached" in r.json()["error"]["message"], r.text
    assert a.get("/api/partner/0123456789abcdef0123456789abcdef").status_code == 404
    assert a.ok("GET", "/api/partner")["total"] == 1 and pair["b"].ok("GET", "/api/partner")["total"] == 1


# -- relationships and sessions ----------------------------------------------------------------------
@pytest.mark.guest
def test_full_then_incremental_sessions_with_named_snapshots(pair, volume):
    a, b = pair["a"], pair["b"]
    vol = volume("repl1")
    src = f"/vsnap/{pair['pool_a']['name']}/repl1"
    write(f"{src}/big.bin", 24 * MIB)
    write(f"{src}/small.txt", 1000)
    rel = relate(pair, vol, remote_vol_name="repl1_copy")
    assert (rel["local_role"], rel["local_vol_id"], rel["remote_vol_name"]) == ("primary", vol["id"], "repl1_copy")
    replica_ds = f"{pair['pool_b']['name']}/repl1_copy"
    assert replica_ds in zfs_names(pair["pool_b"]["name"], "filesystem")
    seen_by_b = b.ok("GET", f"/api/relationship/{rel['id']}")
    assert seen_by_b["local_role"] == "replica" and seen_by_b["local_vol_id"] == rel["remote_vol_id"]
    assert seen_by_b["remote_vol_id"] == vol["id"] and seen_by_b["partner_id"] == rel["partner_id"]
    assert b.ok("GET", "/api/relationship", params={"vol_name": "repl1_copy"})["relationships"][0]["id"] == rel["id"]
    assert a.ok("GET", f"/api/volume/{vol['id']}/relationship")["total"] == 1

    first = replicate(pair, rel["id"], remote_snap_name="nightly-1")
    assert first["status"] == "COMPLETED", first
    assert int(first["size_sent"]) >= 24 * MIB and first["repl_address"]
    assert f"{replica_ds}@nightly-1" in zfs_names(pair["pool_b"]["name"], "snapshot")
    remote_snap = b.ok("GET", f"/api/snapshot/{first['remote_snap_id']}")  # known to B's API at once
    assert (remote_snap["name"], remote_snap["parent_id"]) == ("nightly-1", rel["remote_vol_id"])
    dst = f"/vsnap/{pair['pool_b']['name']}/repl1_copy"
    assert checksums(dst) == checksums(src)

    write(f"{src}/big.bin", 2 * MIB, offset=8 * MIB)  # about 8% of the data changes
    second = replicate(pair, rel["id"])
    assert second["status"] == "COMPLETED", second
    assert int(second["size_sent"]) < 4 * MIB, "an incremental sends roughly the changed bytes"
    assert second["remote_snap_name"] == second["local_snap_name"]
    assert checksums(dst) == checksums(src)
    rel_now = a.ok("GET", f"/api/relationship/{rel['id']}")
    assert rel_now["last_sync_status"] == "COMPLETED"
    assert rel_now["last_success_snap_id"] == rel_now["last_attempt_snap_id"] == second["local_snap_id"]
    # The primary's snapshots are untouched by replication.
    assert {s["name"] for s in a.ok("GET", f"/api/volume/{vol['id']}/snapshot")["snapshots"]} == \
        {first["local_snap_name"], second["local_snap_name"]}
    # A given snapshot can be sent by id.
    snap = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "by-id"})
    third = replicate(pair, rel["id"], snap_id=snap["id"])
    assert third["status"] == "COMPLETED" and third["local_snap_id"] == snap["id"]


@pytest.mark.guest
def test_a_lun_replicates_block_for_block_and_restores_as_a_lun(pair, volume):
    """A LUN (a zvol on OpenZFS; an image alone in its filesystem on zfs-fuse) replicates
    whole, then incrementally; the replica's blocks are the source's, and a clone of the
    replica's snapshot is a LUN of its own holding them."""
    b = pair["b"]
    vol = volume("repllun", "lun", size_total=32 * MIB, size_block=16384)
    src = lun_device(pair["pool_a"]["name"], "repllun")
    write_at(src, 0, os.urandom(4 * MIB))
    rel = relate(pair, vol)
    first = replicate(pair, rel["id"])
    assert first["status"] == "COMPLETED", first
    replica = b.ok("GET", f"/api/volume/{rel['remote_vol_id']}")
    assert (replica["volume_type"], replica["size_total"]) == ("lun", str(32 * MIB))
    if stack.KERNEL:
        assert subprocess.run(["zfs", "get", "-Hpo", "value", "volblocksize",
                               f"{pair['pool_b']['name']}/repllun_replica"],
                              capture_output=True, text=True, check=True).stdout.strip() == "16384"
    dst = lun_device(pair["pool_b"]["name"], "repllun_replica")

    def same_blocks(path: str) -> bool:  # a received zvol's device node comes from udev, a moment later
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.2)
        return sha256(path) == sha256(src)

    assert same_blocks(dst)
    write_at(src, 16 * MIB, os.urandom(MIB))
    second = replicate(pair, rel["id"])
    assert second["status"] == "COMPLETED", second
    assert int(second["size_sent"]) < 4 * MIB, "an incremental sends roughly the changed blocks"
    assert same_blocks(dst)
    clone = b.ok("POST", "/api/volume", json={"name": "repllun_restore", "snapshot_id": second["remote_snap_id"]})
    try:
        assert clone["volume_type"] == "lun" and clone["serial"] != replica["serial"]
        assert same_blocks(lun_device(pair["pool_b"]["name"], "repllun_restore"))
    finally:
        b.ok("DELETE", f"/api/volume/{clone['id']}")


@pytest.mark.guest
def test_replica_rules_and_restore_from_a_replica_snapshot(pair, volume):
    a, b = pair["a"], pair["b"]
    vol = volume("repl2")
    write(f"/vsnap/{pair['pool_a']['name']}/repl2/f", 3 * MIB)
    rel = relate(pair, vol)
    assert rel["remote_vol_name"] == "repl2_replica"
    done = replicate(pair, rel["id"])
    assert done["status"] == "COMPLETED", done
    replica_id = rel["remote_vol_id"]
    assert b.delete(f"/api/volume/{replica_id}").status_code == 409
    assert b.put(f"/api/volume/{replica_id}", json={"name": "other"}).status_code == 409
    assert b.post(f"/api/volume/{replica_id}/relationship",
                  json={"partner_id": pair["partner"]["id"]}).status_code == 409
    assert a.post(f"/api/volume/{vol['id']}/relationship",
                  json={"partner_id": pair["partner"]["id"]}).status_code == 409  # one per partner
    assert b.post(f"/api/relationship/{rel['id']}/session", json={}).status_code == 409  # primary starts
    # Restore at the remote site: clone the replica's snapshot.
    clone = b.ok("POST", "/api/volume", json={"name": "repl2_restore", "snapshot_id": done["remote_snap_id"]})
    try:
        assert checksums(f"/vsnap/{pair['pool_b']['name']}/repl2_restore") == \
            checksums(f"/vsnap/{pair['pool_a']['name']}/repl2")
    finally:
        b.ok("DELETE", f"/api/volume/{clone['id']}")


@pytest.mark.guest
def test_delete_relationship_with_and_without_preserve(pair, volume):
    a, b = pair["a"], pair["b"]
    pool_b = pair["pool_b"]["name"]
    v1, v2 = volume("repl3"), volume("repl4")
    r1, r2 = relate(pair, v1), relate(pair, v2)
    assert replicate(pair, r1["id"])["status"] == "COMPLETED"
    a.ok("DELETE", f"/api/relationship/{r1['id']}")
    assert f"{pool_b}/repl3_replica" not in zfs_names(pool_b)
    assert b.get(f"/api/relationship/{r1['id']}").status_code == 404
    assert b.get(f"/api/volume/{r1['remote_vol_id']}").status_code == 404
    a.ok("DELETE", f"/api/relationship/{r2['id']}", params={"preserve_replica": "true"})
    assert f"{pool_b}/repl4_replica" in zfs_names(pool_b)
    assert b.ok("GET", f"/api/volume/{r2['remote_vol_id']}")["name"] == "repl4_replica"
    assert a.ok("GET", f"/api/volume/{v1['id']}")["name"] == "repl3"  # the primary is never deleted
    # The preserved replica is adopted again with reuse.
    again = relate(pair, v2, remote_vol_name="repl4_replica", reuse=True)
    assert again["remote_vol_id"] == r2["remote_vol_id"]
    a.ok("DELETE", f"/api/relationship/{again['id']}")
    assert f"{pool_b}/repl4_replica" not in zfs_names(pool_b)


def _freeze_receive(snap_name: str, timeout: float = 60) -> list[int]:
    """SIGSTOPs the partner's sshd session that carries the stream of that snapshot, once it
    runs: the data stops moving, as if the network stalled. (Stopping `zfs receive` itself
    would not do: zfs-fuse's daemon reads the stream from the pipe on its own.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _pids("vsnap.worker.serve"):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if any(e.startswith(b"SSH_ORIGINAL_COMMAND=recv ") and e.split()[2] == snap_name.encode()
                   for e in environ if e.startswith(b"SSH_ORIGINAL_COMMAND=")):
                os.kill(ppid, signal.SIGSTOP)
                return [ppid]
        time.sleep(0.05)
    raise AssertionError(f"no receive of {snap_name} appeared")


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_cancel_stops_a_running_transfer_and_the_replica_stays_complete(pair, volume):
    a = pair["a"]
    _, src, rel, _ = replicated(pair, volume, "repl5", 4 * MIB)
    before = zfs_names(pair["pool_b"]["name"], "snapshot")
    write(f"{src}/g", 48 * MIB)
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "to-cancel"})
    frozen = _freeze_receive("to-cancel")
    try:
        assert wait_session(a, s["id"], ("ACTIVE",))["status"] == "ACTIVE"
        canceled = a.ok("POST", f"/api/session/{s['id']}", json={"action": "cancel"})
        assert (canceled["status"], canceled["message"]) == ("FAILED", "Canceled")
    finally:
        _thaw(frozen)
    ended = wait_session(a, s["id"])
    assert (ended["status"], ended["message"]) == ("FAILED", "Canceled")
    time.sleep(2)
    assert zfs_names(pair["pool_b"]["name"], "snapshot") == before  # nothing half-received
    again = replicate(pair, rel["id"])
    assert again["status"] == "COMPLETED", again
    assert_replica_matches(pair, "repl5", src)


def start_frozen_transfer(pair, volume, name: str, snap_name: str):
    """A volume with 40 MiB of data, its relationship, and a first session whose stream is
    frozen on the partner's side: (relationship, source directory, session, frozen pids)."""
    vol = volume(name)
    src = f"/vsnap/{pair['pool_a']['name']}/{name}"
    write(f"{src}/f", 40 * MIB)
    rel = relate(pair, vol)
    s = pair["a"].ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": snap_name})
    return rel, src, s, _freeze_receive(snap_name)


def assert_replica_matches(pair, name: str, src: str) -> None:
    assert checksums(f"/vsnap/{pair['pool_b']['name']}/{name}_replica") == checksums(src)


def test_stalled_stream_fails_and_the_next_session_succeeds(pair, volume):
    a = pair["a"]
    rel, src, s, frozen = start_frozen_transfer(pair, volume, "repl6", "stalls")
    try:
        ended = wait_session(a, s["id"], timeout=90)
    finally:
        _thaw(frozen)
    assert ended["status"] == "FAILED" and "stalled" in ended["message"], ended
    again = replicate(pair, rel["id"])
    assert again["status"] == "COMPLETED", again
    assert_replica_matches(pair, "repl6", src)


@pytest.mark.guest
def test_kill_9_of_the_primary_during_a_transfer(pair, volume):
    a = pair["a"]
    rel, src, s, frozen = start_frozen_transfer(pair, volume, "repl7", "killed")
    try:
        wait_session(a, s["id"], ("ACTIVE",))
        queued = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "queued"})
        assert a.ok("GET", f"/api/session/{queued['id']}")["status"] == "PENDING"  # one at a time
        a.stop(signal.SIGKILL)  # the server and everything it started
    finally:
        _thaw(frozen)
        a.start()
    ended = wait_session(a, s["id"], timeout=60)
    assert ended["status"] == "FAILED" and "stopped during the transfer" in ended["message"], ended
    # The queue is in the database: the session queued behind it still runs, and succeeds.
    again = wait_session(a, queued["id"], timeout=120)
    assert again["status"] == "COMPLETED", again
    snaps = zfs_names(pair["pool_b"]["name"], "snapshot")
    assert f"{pair['pool_b']['name']}/repl7_replica@queued" in snaps
    killed = f"{pair['pool_b']['name']}/repl7_replica@killed"
    if stack.KERNEL and killed in snaps:
        # OpenZFS kept what had arrived (receive -s): the next session finished that stream
        # first, then sent the difference.
        assert "resumed the interrupted transfer of" in again["message"], again
    else:  # zfs-fuse keeps nothing of a broken stream (nor OpenZFS, when nothing had arrived)
        assert killed not in snaps
    assert_replica_matches(pair, "repl7", src)


def test_failures_name_their_cause(pair, volume):
    a = pair["a"]
    vol = volume("repl8")
    src = f"/vsnap/{pair['pool_a']['name']}/repl8"
    write(f"{src}/f", 2 * MIB)
    rel = relate(pair, vol)
    assert replicate(pair, rel["id"])["status"] == "COMPLETED"
    # The replica changed since its last snapshot: the incremental is refused, not forced.
    dst = f"/vsnap/{pair['pool_b']['name']}/repl8_replica"
    with pytest.raises(OSError):
        write(f"{dst}/intruder", 1000)  # replicas are read-only
    subprocess.run(["zfs", "set", "readonly=off", f"{pair['pool_b']['name']}/repl8_replica"], check=True)
    write(f"{dst}/intruder", 1000)  # ...unless an admin changes that by hand
    failed = replicate(pair, rel["id"])
    assert failed["status"] == "FAILED" and "modified" in failed["message"], failed
    assert os.path.exists(f"{dst}/intruder")
    a_rel = a.ok("GET", f"/api/relationship/{rel['id']}")
    assert a_rel["last_sync_status"] == "FAILED" and a_rel["last_attempt_snap_id"] == failed["local_snap_id"]

    # The partner's sshd is down: unreachable.
    pidfile = STATE_B / "lab" / "run" / "sshd.pid"
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
    try:
        time.sleep(1)
        down = replicate(pair, rel["id"])
        assert down["status"] == "FAILED" and "unreachable" in down["message"], down
        other = volume("repl8b")
        r = a.post(f"/api/volume/{other['id']}/relationship", json={"partner_id": pair["partner"]["id"]})
        assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"], r.text
        assert a.ok("GET", f"/api/volume/{other['id']}/relationship")["total"] == 0
    finally:
        env = {**os.environ, "VSNAP_STATE": str(STATE_B), "VSNAP_SSH_PORT": str(SSH_PORT_B),
               "VSNAP_LAB_DISKS": "3"}
        subprocess.run([str(ROOT / "lab" / "lab.sh"), "up"], env=env, check=True, capture_output=True,
                       timeout=300)


def test_replica_pool_full(pair, volume):
    pool_b = pair["pool_b"]["name"]
    vol = volume("repl9")
    write(f"/vsnap/{pair['pool_a']['name']}/repl9/f", 48 * MIB)
    rel = relate(pair, vol)
    free = int(subprocess.run(["zfs", "get", "-Hp", "-o", "value", "available", pool_b], capture_output=True,
                              text=True, check=True).stdout)
    filler = f"{pool_b}/filler"  # space held by someone else: the pool has 8 MiB left
    subprocess.run(["zfs", "create", "-o", f"reservation={free - 8 * MIB}", filler], check=True)
    try:
        full = replicate(pair, rel["id"])
        assert full["status"] == "FAILED" and "space" in full["message"], full
        assert not [n for n in zfs_names(pool_b, "snapshot") if "repl9_replica@" in n]
        a_rel = pair["a"].ok("GET", f"/api/relationship/{rel['id']}")  # the primary's record says so
        assert (a_rel["last_sync_status"], a_rel["last_attempt_snap_id"], a_rel["last_success_snap_id"]) == \
            ("FAILED", full["local_snap_id"], None)
    finally:
        destroy_dataset(filler)
    assert replicate(pair, rel["id"])["status"] == "COMPLETED"


# -- all or nothing across partners (issue 15) ---------------------------------------------------
def test_a_replica_clone_refuses_the_relationship_delete_and_nothing_changes(pair, volume):
    a, b = pair["a"], pair["b"]
    pool_b = pair["pool_b"]["name"]
    _, src, rel, done = replicated(pair, volume, "repl10", 2 * MIB)
    clone = b.ok("POST", "/api/volume", json={"name": "repl10_restore", "snapshot_id": done["remote_snap_id"]})
    try:
        for _ in range(2):  # a retry is refused the same way: nothing was half-done
            r = a.delete(f"/api/relationship/{rel['id']}")
            assert r.status_code == 409, r.text
            message = r.json()["error"]["message"]
            assert "repl10_restore" in message and "preserve_replica=true" in message, message
        assert a.ok("GET", f"/api/relationship/{rel['id']}")["id"] == rel["id"]
        assert b.ok("GET", f"/api/relationship/{rel['id']}")["id"] == rel["id"]
        assert f"{pool_b}/repl10_replica" in zfs_names(pool_b)
        write(f"{src}/g", MIB)
        assert replicate(pair, rel["id"])["status"] == "COMPLETED"  # the relationship still works
        assert_replica_matches(pair, "repl10", src)
    finally:
        b.ok("DELETE", f"/api/volume/{clone['id']}")
    a.ok("DELETE", f"/api/relationship/{rel['id']}")
    assert f"{pool_b}/repl10_replica" not in zfs_names(pool_b)
    assert b.get(f"/api/relationship/{rel['id']}").status_code == 404
    assert b.get(f"/api/volume/{rel['remote_vol_id']}").status_code == 404


def test_a_partner_that_forgot_us_never_traps_the_primary_and_partnering_again_keeps_the_id(
        pair, volume, admin):
    a, b = pair["a"], pair["b"]
    partner_id = pair["partner"]["id"]
    pool_b = pair["pool_b"]["name"]
    vol, _, rel, _ = replicated(pair, volume, "repl11", MIB)
    seen = a.ok("GET", f"/api/partner/{partner_id}")
    assert (seen["trust_status"], seen["trust_message"]) == ("OK", None)
    # The partner loses its record of us (rebuilt, or the partnership removed there): its sshd
    # refuses our key.
    keys = STATE_B / "ssh" / "authorized_keys"
    saved = keys.read_text()
    keys.write_text("".join(line for line in saved.splitlines(True) if f"vsnap-partner:{partner_id}" not in line))
    try:
        seen = a.ok("GET", f"/api/partner/{partner_id}")
        assert seen["trust_status"] == "REFUSED" and "no longer accepts" in seen["trust_message"], seen
        r = a.delete(f"/api/relationship/{rel['id']}")
        assert r.status_code == 409 and "preserve_replica=true" in r.json()["error"]["message"], r.text
        assert a.ok("GET", f"/api/relationship/{rel['id']}")["id"] == rel["id"]
        # preserve_replica needs no partner: the relationship goes here, then the volume and
        # the partner can.
        a.ok("DELETE", f"/api/relationship/{rel['id']}", params={"preserve_replica": "true"})
        a.ok("DELETE", f"/api/volume/{vol['id']}")
        a.ok("DELETE", f"/api/partner/{partner_id}")
        assert a.get(f"/api/relationship/{rel['id']}").status_code == 404
        # The partner's side is still there, untouched: its replica is kept, and known to it.
        assert b.ok("GET", f"/api/relationship/{rel['id']}")["local_role"] == "replica"
        assert f"{pool_b}/repl11_replica" in zfs_names(pool_b)
    finally:
        keys.write_text(saved)
    # Partnering again with the same appliance: the id the partner knows us by, on both sides;
    # and again while a relationship uses it: the same id, and the relationship goes on working.
    partner_again = {"remote_addr": "127.0.0.1", "remote_user": admin.name, "remote_pass": admin.password,
                     "remote_api_port": PORT_B}
    assert a.ok("POST", "/api/partner", json=partner_again)["id"] == partner_id
    _, kept_src, kept_rel, _ = replicated(pair, volume, "repl11k", MIB)
    assert a.ok("POST", "/api/partner", json=partner_again)["id"] == partner_id
    assert [p["id"] for p in b.ok("GET", "/api/partner")["partners"]] == [partner_id]
    assert a.ok("GET", "/api/partner")["total"] == 1
    assert a.ok("GET", f"/api/partner/{partner_id}")["trust_status"] == "OK"
    write(f"{kept_src}/g", MIB)
    assert replicate(pair, kept_rel["id"])["status"] == "COMPLETED"
    # The partner's leftover relationship can be deleted on its side (the primary has forgotten it).
    b.ok("DELETE", f"/api/relationship/{rel['id']}")
    assert f"{pool_b}/repl11_replica" not in zfs_names(pool_b)


def test_cancels_at_any_point_report_the_truth_and_the_next_session_completes(pair, volume):
    a, b = pair["a"], pair["b"]
    pool_b = pair["pool_b"]["name"]
    _, src, rel, _ = replicated(pair, volume, "repl12", 4 * MIB)
    outcomes = []
    last = None
    # 64 MiB take about a second here, and a cancel request a few tenths: cancels land
    # mid-stream, at its very end (the partner committing) and after it.
    for i, delay in enumerate((0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0, 1.3)):
        write(f"{src}/d", 64 * MIB)
        s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": f"c{i}"})
        time.sleep(delay)
        cancel = a.post(f"/api/session/{s['id']}", json={"action": "cancel"})
        assert cancel.status_code in (200, 409), cancel.text  # 409: it had ended already
        if cancel.status_code == 200:  # answered once the session ended: its final status
            assert cancel.json()["status"] in ("FAILED", "COMPLETED"), cancel.json()
        ended = wait_session(a, s["id"])
        arrived = f"{pool_b}/repl12_replica@c{i}" in zfs_names(pool_b, "snapshot")
        # The final status is the truth: COMPLETED exactly when the partner holds the snapshot.
        assert (ended["status"] == "COMPLETED") == arrived, (delay, ended, arrived)
        outcomes.append((delay, cancel.status_code, ended["status"], ended["message"]))
        last = replicate(pair, rel["id"])
        assert last["status"] == "COMPLETED", (delay, last)
    print("\ncancels (delay, answer, status, message):\n" + "\n".join(map(str, outcomes)))
    assert ("FAILED", "Canceled") in [(o[2], o[3]) for o in outcomes], outcomes  # some did stop a stream
    # Restore on the partner from its newest snapshot: the data is the primary's.
    restore = b.ok("POST", "/api/volume", json={"name": "repl12_restore", "snapshot_id": last["remote_snap_id"]})
    try:
        assert checksums(f"/vsnap/{pool_b}/repl12_restore") == checksums(src)
    finally:
        b.ok("DELETE", f"/api/volume/{restore['id']}")


# -- beyond vSnap 1.0: what the appliance offers, bandwidth limits, compressed streams -------------

@pytest.mark.guest
def test_features_name_what_this_stack_offers(pair):
    for server in (pair["a"], pair["b"]):
        features = server.ok("GET", "/api/system")["features"]
        # The relay's bandwidth limit everywhere; compressed and resumable streams where ZFS
        # can (OpenZFS in the guest), never on zfs-fuse.
        assert features == (["bandwidth_limit", "compressed_send", "encryption", "replication_bookmarks",
                             "resumable_send"] if stack.KERNEL else ["bandwidth_limit"])


def test_a_bandwidth_limit_keeps_the_stream_under_it_and_the_data_whole(pair, volume):
    a = pair["a"]
    vol = volume("ratelimited")
    src = f"/vsnap/{pair['pool_a']['name']}/ratelimited"
    write(f"{src}/f", 64 * MIB)  # incompressible: the stream is the data
    limit = 2 * MIB
    rel = relate(pair, vol, max_rate=limit)
    assert rel["max_rate"] == str(limit)
    assert pair["b"].ok("GET", f"/api/relationship/{rel['id']}")["max_rate"] is None  # the replica sends nothing
    started = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={})
    live = wait_session(a, started["id"], statuses=("ACTIVE",), timeout=30)
    deadline = time.monotonic() + 60
    while live["status"] == "ACTIVE" and live["rate"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        live = a.ok("GET", f"/api/session/{started['id']}")
    if live["status"] == "ACTIVE":  # the current rate, over the last seconds
        assert 0 < int(live["rate"]) <= limit * 1.1, live
    done = wait_session(a, started["id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    sent, average = int(done["size_sent"]), int(done["rate"])
    assert sent >= 64 * MIB
    assert limit * 0.9 <= average <= limit * 1.1, done  # over the ~32 s of the stream
    assert int(done["time_ended"]) - int(done["time_started"]) >= sent / limit * 0.9
    assert checksums(f"/vsnap/{pair['pool_b']['name']}/ratelimited_replica") == checksums(src)
    # Changed later, or taken away; the replica's side refuses one (only the primary sends).
    rel_b = pair["b"].ok("GET", f"/api/relationship/{rel['id']}")
    assert a.ok("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": None})["max_rate"] is None
    assert a.ok("PUT", f"/api/relationship/{rel['id']}", json={**rel, "max_rate": "1048576"})["max_rate"] == \
        "1048576"  # its own representation sent back, with a new limit
    refused = pair["b"].request("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": limit})
    assert refused.status_code == 409 and "primary" in refused.json()["error"]["message"]
    assert pair["b"].ok("GET", f"/api/relationship/{rel['id']}") == rel_b
    for bad in (0, -1, 1.5, "fast", True, 10**13):
        r = a.request("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": bad})
        assert r.status_code == 400 and r.json()["error"]["type"], (bad, r.text)
    assert a.ok("GET", f"/api/relationship/{rel['id']}")["max_rate"] == "1048576"


@pytest.mark.guest
def test_compressed_data_crosses_the_wire_compressed(pair, volume):
    if not stack.KERNEL:
        pytest.skip("zfs-fuse cannot send compressed streams (no zfs send -c): the guest's OpenZFS runs this")
    vol = volume("compressible")
    src = f"/vsnap/{pair['pool_a']['name']}/compressible"
    with open(f"{src}/f", "wb") as f:  # each 128 KiB record: 48 KiB of noise and 80 KiB lz4 takes away
        for _ in range(256):
            f.write(os.urandom(48 * 1024) + bytes(80 * 1024))
    rel = relate(pair, vol)
    done = replicate(pair, rel["id"])
    assert done["status"] == "COMPLETED", done
    snap = f"{pair['pool_a']['name']}/compressible@{done['local_snap_name']}"
    out = subprocess.run(["zfs", "get", "-Hpo", "value", "referenced,logicalreferenced", snap],
                         capture_output=True, text=True, check=True).stdout.split()
    on_disk, logical = int(out[0]), int(out[1])
    sent = int(done["size_sent"])
    assert logical >= 2 * on_disk, (logical, on_disk)  # the data did compress
    assert sent <= 1.05 * on_disk, (sent, on_disk, logical)
    assert checksums(f"/vsnap/{pair['pool_b']['name']}/compressible_replica") == checksums(src)


@pytest.mark.guest
def test_a_transfer_killed_half_way_resumes_where_it_stopped(pair, volume):
    if not stack.KERNEL:
        pytest.skip("zfs-fuse cannot resume a stream (no receive -s, send -t): the guest's OpenZFS runs this")
    a, b = pair["a"], pair["b"]
    vol = volume("resumes")
    src = f"/vsnap/{pair['pool_a']['name']}/resumes"
    for part in range(16):
        write(f"{src}/part{part}", 64 * MIB)  # 1 GiB, incompressible
    # A limit makes the stream's pace known, so the kill lands about half way.
    rel = relate(pair, vol, max_rate=24 * MIB)
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "big"})
    deadline = time.monotonic() + 300
    while True:
        now = a.ok("GET", f"/api/session/{s['id']}")
        assert now["status"] in ("PENDING", "ACTIVE") and time.monotonic() < deadline, now
        if int(now["size_sent"] or 0) >= 512 * MIB:
            break
        time.sleep(0.1)
    a.stop(signal.SIGKILL)  # the primary and everything it started: the stream breaks
    a.start()
    broken = wait_session(a, s["id"], timeout=60)
    assert broken["status"] == "FAILED", broken
    a.ok("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": None})
    again = replicate(pair, rel["id"], snap_id=broken["local_snap_id"], remote_snap_name="big")
    assert again["status"] == "COMPLETED", again
    assert "resumed the interrupted transfer" in again["message"], again
    stream, after_break = int(again["size_sent_total"]), int(again["size_sent"])
    assert stream >= 1024 * MIB
    assert after_break <= 0.55 * stream, (after_break, stream)
    # The replica's data is whole: a clone of its snapshot reads as the source does.
    clone = b.ok("POST", "/api/volume", json={"name": "resumes_restore", "snapshot_id": again["remote_snap_id"]})
    try:
        assert checksums(f"/vsnap/{pair['pool_b']['name']}/resumes_restore") == checksums(src)
    finally:
        b.ok("DELETE", f"/api/volume/{clone['id']}")


# -- incrementals that survive retention: bookmarks, holds, and a replica that diverged ------------

def userrefs(snapshot: str) -> int:
    return int(subprocess.run(["zfs", "get", "-Hpo", "value", "userrefs", snapshot],
                              capture_output=True, text=True, check=True).stdout.strip())


def bookmarks_of(dataset: str) -> set[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "bookmark", "-d", "1", dataset],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.guest
def test_deleting_the_last_common_snapshot_leaves_the_next_incremental_its_bookmark(pair, volume):
    a = pair["a"]
    vol, src, rel, first = replicated(pair, volume, "retained", 8 * MIB)
    dataset = f"{pair['pool_a']['name']}/retained"
    guid = subprocess.run(["zfs", "get", "-Hpo", "value", "guid", f"{dataset}@{first['local_snap_name']}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    common = a.ok("GET", f"/api/relationship/{rel['id']}")["last_common_snapshot"]
    assert common == {"name": first["local_snap_name"], "guid": guid}
    assert pair["b"].ok("GET", f"/api/relationship/{rel['id']}")["last_common_snapshot"] == common
    # Backup software's retention deletes the only snapshot both sides hold.
    a.ok("DELETE", f"/api/snapshot/{first['local_snap_id']}")
    write(f"{src}/g", 1 * MIB)
    second = replicate(pair, rel["id"])
    if not stack.KERNEL:  # zfs-fuse has no bookmarks: the session says why it cannot go on
        assert second["status"] == "FAILED" and "none in common" in second["message"], second
        return
    assert second["status"] == "COMPLETED", second
    # An incremental, with the only snapshot both held gone: its base was the bookmark (the
    # message says so, unless a slow partner's end made it say that the snapshot arrived whole).
    assert int(second["size_sent"]) < 3 * MIB, "an incremental from the bookmark, not a full stream"
    assert "bookmark of " + first["local_snap_name"] in second["message"] or \
        "received the whole snapshot" in second["message"], second
    assert checksums(f"/vsnap/{pair['pool_b']['name']}/retained_replica") == checksums(src)
    # One bookmark of ours, of the new common snapshot; none of the data's snapshots held.
    new_guid = subprocess.run(["zfs", "get", "-Hpo", "value", "guid", f"{dataset}@{second['local_snap_name']}"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert bookmarks_of(dataset) == {f"{dataset}#vsnap-repl-{rel['id']}-{new_guid}"}
    assert a.ok("GET", f"/api/relationship/{rel['id']}")["last_common_snapshot"]["guid"] == new_guid
    assert userrefs(f"{dataset}@{second['local_snap_name']}") == 0
    # No bookmark shows as a volume or a snapshot.
    assert {v["name"] for v in a.ok("GET", "/api/volume")["volumes"]} >= {"retained"}
    assert not any("#" in v["name"] for v in a.ok("GET", "/api/volume")["volumes"])
    # The relationship's bookmarks go with it.
    a.ok("DELETE", f"/api/relationship/{rel['id']}")
    assert bookmarks_of(dataset) == set()


@pytest.mark.guest
def test_a_diverged_replica_is_rolled_back_only_when_asked_and_a_snapshot_sent_from_is_held(pair, volume):
    a, b = pair["a"], pair["b"]
    vol, src, rel, first = replicated(pair, volume, "diverges", 4 * MIB)
    # Someone snapshots the replica on the partner, outside the API: it diverged.
    replica = f"{pair['pool_b']['name']}/diverges_replica"
    subprocess.run(["zfs", "snapshot", f"{replica}@made-there"], check=True)
    write(f"{src}/g", 1 * MIB)
    failed = replicate(pair, rel["id"])
    assert failed["status"] == "FAILED" and "made-there" in failed["message"], failed
    assert "rollback_replica" in failed["message"]
    assert f"{replica}@made-there" in zfs_names(pair["pool_b"]["name"], "snapshot")  # never rolled back unasked
    bad = a.request("POST", f"/api/relationship/{rel['id']}/session", json={"rollback_replica": "sometimes"})
    assert bad.status_code == 400 and bad.json()["error"]["type"]
    rolled = replicate(pair, rel["id"], rollback_replica=True)
    assert rolled["status"] == "COMPLETED", rolled
    assert "rolled back" in rolled["message"] and "made-there" in rolled["message"]
    assert f"{replica}@made-there" not in zfs_names(pair["pool_b"]["name"], "snapshot")
    assert checksums(f"/vsnap/{pair['pool_b']['name']}/diverges_replica") == checksums(src)
    assert b.ok("GET", f"/api/relationship/{rel['id']}")["last_common_snapshot"]["name"] == \
        rolled["remote_snap_name"]
    # While a session sends from it, the base cannot be deleted (a hold); once the session
    # ends (here canceled) it is let go.
    base = f"{pair['pool_a']['name']}/diverges@{rolled['local_snap_name']}"
    write(f"{src}/h", 32 * MIB)
    a.ok("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": 1 * MIB})
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={})
    deadline = time.monotonic() + 30  # held once the session has chosen it as its base
    while userrefs(base) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.ok("GET", f"/api/session/{s['id']}")["status"] == "ACTIVE"
    assert userrefs(base) >= 1
    if stack.KERNEL:  # zfs-fuse's destroy waits for a send of the dataset to end, held or not
        refused = a.request("DELETE", f"/api/snapshot/{rolled['local_snap_id']}")
        assert refused.status_code == 409 and "held" in refused.json()["error"]["message"], refused.text
    assert a.ok("POST", f"/api/session/{s['id']}", json={"action": "cancel"})["status"] == "FAILED"
    assert userrefs(base) == 0
    a.ok("DELETE", f"/api/snapshot/{rolled['local_snap_id']}")
