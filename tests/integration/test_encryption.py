"""Encrypted pools (beyond vSnap 1.0): on OpenZFS (the kernel lab's guest, `make guest-suite`)
the data is unreadable without the key on the pool's disks, in the replication stream and on
the partner, while an unencrypted control shows the same kind of marker in each place (so each
check can fail); the partner restores a replica once the key is carried there with the CLI.
On zfs-fuse (no native encryption) a create that asks for it is refused and changes nothing."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import stack
from .appliance import Appliance
from .conftest import STATE, sweep_test_pools
from .test_replication import PORT_B, SSH_PORT_B, STATE_B, _forget_everything, wait_session
from .zfs_tools import PREFIX, unused, zfs_get

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 8 << 20

BAD_ENCRYPTION = [True, "yes", [], {"enabled": "maybe"}, {"enabled": None}, {},
                  {"enabled": True, "cipher": "aes-128-ccm"}, {"enabled": False, "key": "00" * 32}]


def key_files(state: Path) -> list[Path]:
    keys = state / "keys"
    return sorted(keys.iterdir()) if keys.is_dir() else []


# -- everywhere: what is refused changes nothing -------------------------------------------------

@pytest.mark.guest
def test_bad_encryption_objects_are_refused_and_change_nothing(appliance, pools):
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    before = appliance.ok("GET", "/api/pool")
    keys_before = key_files(STATE)
    disk = unused(appliance, 1)
    for bad in BAD_ENCRYPTION:
        r = appliance.post("/api/pool", json={"name": f"{PREFIX}encbad", "pool_type": "raid0",
                                              "disk_list": [disk[0]["uuid"]], "encryption": bad})
        assert r.status_code == 400 and r.json()["error"]["type"] == "ValidationError", (bad, r.text)
        assert "encryption" in r.json()["error"]["message"], (bad, r.text)
    assert appliance.ok("GET", "/api/pool") == before
    assert key_files(STATE) == keys_before
    plain = pools(f"{PREFIX}encoff", "raid0", disk, encryption={"enabled": False})
    assert plain["encryption"] == {"enabled": False}
    assert key_files(STATE) == keys_before


def test_zfs_fuse_refuses_encryption_by_name_and_changes_nothing(appliance, pools):
    if stack.KERNEL:
        pytest.skip("OpenZFS has native encryption: this is zfs-fuse's refusal")
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    assert "encryption" not in appliance.ok("GET", "/api/system")["features"]
    before = appliance.ok("GET", "/api/pool")
    zpools = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True).stdout
    keys_before = key_files(STATE)
    disk = unused(appliance, 1)
    r = appliance.post("/api/pool", json={"name": f"{PREFIX}encfuse", "pool_type": "raid0",
                                          "disk_list": [disk[0]["uuid"]], "encryption": {"enabled": True}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "ValidationError" and "encryption" in error["message"] \
        and "zfs-fuse" in error["message"], error
    assert appliance.ok("GET", "/api/pool") == before
    assert subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True).stdout == zpools
    assert key_files(STATE) == keys_before
    assert [d["uuid"] for d in unused(appliance, 1)] == [disk[0]["uuid"]]  # the disk is still unused


# -- OpenZFS: encrypted at rest, raw on the wire and on the partner ----------------------------

def found_in(path: str, marker: bytes) -> bool:
    """Whether `marker` is anywhere in a file, a block device or a stream's bytes (read past
    the page cache's copy of a device: ZFS writes around it)."""
    with open(path, "rb") as f:
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        tail = b""
        while chunk := f.read(CHUNK):
            if marker in tail + chunk:
                return True
            tail = chunk[-len(marker):]
    return False


def pool_devices(server, pool_id: str) -> list[str]:
    disks = server.ok("GET", f"/api/pool/{pool_id}")["disks"]
    return [os.path.realpath(d) for group in disks.values() for d in group]


def put_marker(directory: str) -> tuple[bytes, str]:
    """A file holding a fresh random 64-byte marker (within incompressible data), on disk and
    in the pool's last transaction group: (the marker, the file's sha256)."""
    marker = os.urandom(64)
    data = os.urandom(4096) + marker + os.urandom(4096)
    with open(f"{directory}/secret", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(["zpool", "sync"], check=True)
    return marker, hashlib.sha256(data).hexdigest()


def cli(state: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSNAP_STATE": str(state)}
    return subprocess.run([sys.executable, "-m", "vsnap.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def partner_b(appliance, admin):
    """Appliance B, as test_replication's fixture makes it, given the time a loaded guest takes
    to start it (OpenZFS under TCG)."""
    if not stack.KERNEL:
        pytest.skip("zfs-fuse has no native encryption: the guest's OpenZFS runs this")
    server = Appliance(STATE_B, PORT_B, ssh_port=SSH_PORT_B, log_name="server-b",
                       env={"VSNAP_AUTH_FAIL_LIMIT": "100000", "VSNAP_REPL_STALL_SECONDS": "5"}).start(timeout=240)
    server.account = admin
    try:
        sweep_test_pools(server, machine_wide=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def enc(appliance, partner_b, admin):
    """A with an encrypted pool and an unencrypted control pool, B with a plain pool, partnered."""
    if not stack.KERNEL:
        pytest.skip("zfs-fuse has no native encryption: the guest's OpenZFS runs this")
    a, b = appliance, partner_b
    for server in (a, b):
        _forget_everything(server)
        server.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    disks = unused(a, 2)
    made = {"a": a, "b": b}
    made["enc"] = a.ok("POST", "/api/pool", json={"name": f"{PREFIX}enc", "pool_type": "raid0",
                                                  "disk_list": [disks[0]["uuid"]], "encryption": {"enabled": True}})
    made["ctl"] = a.ok("POST", "/api/pool", json={"name": f"{PREFIX}ctl", "pool_type": "raid0",
                                                  "disk_list": [disks[1]["uuid"]]})
    made["pool_b"] = b.ok("POST", "/api/pool", json={"name": f"{PREFIX}encb", "pool_type": "raid0",
                                                     "disk_list": [unused(b, 1)[0]["uuid"]]})
    made["partner"] = a.ok("POST", "/api/partner", json={
        "remote_addr": "127.0.0.1", "remote_user": admin.name, "remote_pass": admin.password,
        "remote_api_port": PORT_B, "local_addr": None, "local_api_port": None, "remote_ssh_port": None})
    try:
        yield made
    finally:
        for server in (a, b):
            _forget_everything(server)
        for server, pool in ((a, made["enc"]), (a, made["ctl"]), (b, made["pool_b"])):
            for v in server.ok("GET", "/api/volume", params={"pool_id": pool["id"]})["volumes"]:
                server.delete(f"/api/volume/{v['id']}")
            server.delete(f"/api/pool/{pool['id']}")


@pytest.mark.guest
def test_an_encrypted_pool_replicates_raw_and_restores_on_the_partner_with_the_key(enc):
    a, b = enc["a"], enc["b"]
    assert "encryption" in a.ok("GET", "/api/system")["features"]
    # The pool and its view: encrypted with a key file of its own, root only.
    pool = a.ok("GET", f"/api/pool/{enc['enc']['id']}")
    assert enc["enc"]["encryption"] == pool["encryption"] == {"enabled": True}
    assert a.ok("GET", f"/api/pool/{enc['ctl']['id']}")["encryption"] == {"enabled": False}
    listed = {p["id"]: p for p in a.ok("GET", "/api/pool")["pools"]}
    assert listed[pool["id"]]["encryption"] == {"enabled": True}
    name = pool["name"]
    assert zfs_get(name, "encryption") == "aes-256-gcm" and zfs_get(name, "keyformat") == "raw"
    location = zfs_get(name, "keylocation")
    key_path = Path(location.removeprefix("file://"))
    assert location.startswith("file://") and key_path.parent == STATE / "keys", location
    assert key_path.stat().st_mode & 0o777 == 0o600 and key_path.parent.stat().st_mode & 0o777 == 0o700
    key = key_path.read_bytes()
    assert len(key) == 32

    # A volume in each pool, each with a marker of its own.
    vol = a.ok("POST", "/api/volume", json={"name": "secretfs", "volume_type": "filesystem", "pool_id": pool["id"]})
    ctl = a.ok("POST", "/api/volume", json={"name": "plainfs", "volume_type": "filesystem",
                                            "pool_id": enc["ctl"]["id"]})
    assert zfs_get(f"{name}/secretfs", "encryption") == "aes-256-gcm"
    marker, digest = put_marker(f"/vsnap/{name}/secretfs")
    ctl_marker, _ = put_marker(f"/vsnap/{enc['ctl']['name']}/plainfs")

    # At rest: not on the encrypted pool's disks; the control's is on its pool's disks.
    assert not any(found_in(dev, marker) for dev in pool_devices(a, pool["id"]))
    assert any(found_in(dev, ctl_marker) for dev in pool_devices(a, enc["ctl"]["id"]))

    # Replicated: raw (the session says so in what it sent), encrypted on the partner, which
    # has no key.
    rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": enc["partner"]["id"]})
    rel_ctl = a.ok("POST", f"/api/volume/{ctl['id']}/relationship", json={"partner_id": enc["partner"]["id"]})
    for r in (rel, rel_ctl):
        s = a.ok("POST", f"/api/relationship/{r['id']}/session", json={"remote_snap_name": "first"})
        done = wait_session(a, s["id"])
        assert done["status"] == "COMPLETED", done
    replica = f"{enc['pool_b']['name']}/secretfs_replica"
    assert zfs_get(replica, "encryption") == "aes-256-gcm"
    assert zfs_get(replica, "keystatus") == "unavailable"
    assert zfs_get(replica, "mounted") == "no"
    assert zfs_get(replica, "readonly") == "on"
    b_volumes = {v["name"]: v for v in b.ok("GET", "/api/volume")["volumes"]}
    assert "secretfs_replica" in b_volumes  # the replica keeps its place in the partner's API
    assert not any(found_in(dev, marker) for dev in pool_devices(b, enc["pool_b"]["id"]))
    assert any(found_in(dev, ctl_marker) for dev in pool_devices(b, enc["pool_b"]["id"]))

    # In the stream: what `zfs send -w` gives (what the session sent) does not hold the marker;
    # a plain send of the control does, and so would a plain send of the encrypted volume.
    snap = f"{name}/secretfs@{done_name(a, rel)}"
    ctl_snap = f"{enc['ctl']['name']}/plainfs@{done_name(a, rel_ctl)}"
    for argv, secret, expected in ((["zfs", "send", "-w", snap], marker, False),
                                   (["zfs", "send", ctl_snap], ctl_marker, True),
                                   (["zfs", "send", snap], marker, True)):
        stream = Path(f"/tmp/vsnap-enc-stream-{os.getpid()}")
        try:
            with open(stream, "wb") as out:
                subprocess.run(argv, stdout=out, check=True, timeout=300)
            assert found_in(str(stream), secret) is expected, argv
        finally:
            stream.unlink(missing_ok=True)

    # An incremental follows, raw too, into the locked replica.
    with open(f"/vsnap/{name}/secretfs/more", "wb") as f:
        f.write(os.urandom(1 << 20))
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "second"})
    second = wait_session(a, s["id"])
    assert second["status"] == "COMPLETED", second
    assert zfs_get(replica, "keystatus") == "unavailable"

    # The key never reaches the database, the logs or the audit log of either appliance.
    for state in (STATE, STATE_B):
        for path in state.rglob("*"):
            if path.is_file() and path.parent != state / "keys" and path.stat().st_size < (256 << 20):
                data = path.read_bytes()
                assert key not in data and key.hex().encode() not in data, path

    # The CLI: root only, on the appliance. Exported on A, imported on B for the replica.
    exported = cli(STATE, "key", "export", name)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.decode().strip() == key.hex()
    assert cli(STATE, "key", "export", enc["ctl"]["name"]).returncode == 1  # not encrypted
    assert cli(STATE_B, "key", "import", replica, stdin=b"00" * 32).returncode == 1  # a wrong key
    assert zfs_get(replica, "keystatus") == "unavailable"
    imported = cli(STATE_B, "key", "import", replica, stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert zfs_get(replica, "keystatus") == "available"
    b_keys = [p for p in key_files(STATE_B) if p.read_bytes() == key]
    assert len(b_keys) == 1 and b_keys[0].stat().st_mode & 0o777 == 0o600
    assert zfs_get(replica, "keylocation") == f"file://{b_keys[0]}"

    # Restored on the partner: a clone of the replica's first snapshot reads back the data.
    first = next(sn for sn in b.ok("GET", "/api/snapshot")["snapshots"]
                 if sn["name"] == "first" and sn["parent_id"] == b_volumes["secretfs_replica"]["id"])
    clone = b.ok("POST", "/api/volume", json={"name": "secretfs_restored", "snapshot_id": first["id"]})
    try:
        with open(f"/vsnap/{enc['pool_b']['name']}/secretfs_restored/secret", "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    finally:
        b.ok("DELETE", f"/api/volume/{clone['id']}")
    # and the replica still takes the next incremental, its key loaded now
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "third"})
    third = wait_session(a, s["id"])
    assert third["status"] == "COMPLETED", third


def done_name(server, rel: dict) -> str:
    sessions = server.ok("GET", "/api/session", params={"rel_id": rel["id"]})["sessions"]
    return sorted(sessions, key=lambda s: int(s["id"]))[0]["local_snap_name"]


@pytest.mark.guest
def test_keys_are_loaded_at_start_and_go_with_their_pool(enc):
    a = enc["a"]
    disk = unused(a, 1)
    made = a.ok("POST", "/api/pool", json={"name": f"{PREFIX}enc2", "pool_type": "raid0",
                                           "disk_list": [disk[0]["uuid"]], "encryption": {"enabled": True}})
    name = made["name"]
    key_path = Path(zfs_get(name, "keylocation").removeprefix("file://"))
    assert key_path.is_file()
    a.ok("POST", "/api/volume", json={"name": "v", "volume_type": "filesystem", "pool_id": made["id"]})
    # Exported while the server is down: the next start imports it, loads its key, mounts it.
    a.stop()
    subprocess.run(["zpool", "export", name], check=True, timeout=120)
    a.start(timeout=240)  # a loaded guest under TCG starts slowly
    deadline = time.monotonic() + 60
    while zfs_get(f"{name}/v", "mounted") != "yes" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert zfs_get(name, "keystatus") == "available"
    assert zfs_get(f"{name}/v", "mounted") == "yes"
    assert a.ok("GET", f"/api/pool/{made['id']}")["encryption"] == {"enabled": True}
    # Deleted: the pool, then its key.
    for v in a.ok("GET", "/api/volume", params={"pool_id": made["id"]})["volumes"]:
        a.ok("DELETE", f"/api/volume/{v['id']}")
    a.ok("DELETE", f"/api/pool/{made['id']}")
    assert not key_path.exists()


@pytest.mark.guest
def test_replicas_in_an_encrypted_partner_pool(enc):
    """The partner's own pool is encrypted: a plain volume's replica is encrypted there with the
    partner's key (readable there), an encrypted volume's stays raw with the primary's key
    (not readable there). Both full streams replace the replica's empty (encrypted) dataset."""
    a, b = enc["a"], enc["b"]
    pool_b2 = b.ok("POST", "/api/pool", json={"name": f"{PREFIX}encb2", "pool_type": "raid0",
                                              "disk_list": [unused(b, 1)[0]["uuid"]], "encryption": {"enabled": True}})
    try:
        plain = a.ok("POST", "/api/volume", json={"name": "plain2", "volume_type": "filesystem",
                                                  "pool_id": enc["ctl"]["id"]})
        secret = a.ok("POST", "/api/volume", json={"name": "secret2", "volume_type": "filesystem",
                                                   "pool_id": enc["enc"]["id"]})
        _, plain_digest = put_marker(f"/vsnap/{enc['ctl']['name']}/plain2")
        put_marker(f"/vsnap/{enc['enc']['name']}/secret2")
        for vol in (plain, secret):
            rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship",
                       json={"partner_id": enc["partner"]["id"], "remote_pool_id": pool_b2["id"]})
            for name in ("one", "two"):
                s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": name})
                done = wait_session(a, s["id"])
                assert done["status"] == "COMPLETED", done
        b2 = pool_b2["name"]
        assert zfs_get(f"{b2}/plain2_replica", "encryptionroot") == b2
        assert zfs_get(f"{b2}/plain2_replica", "keystatus") == "available"
        with open(f"/vsnap/{b2}/plain2_replica/secret", "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == plain_digest
        assert zfs_get(f"{b2}/secret2_replica", "encryptionroot") == f"{b2}/secret2_replica"
        assert zfs_get(f"{b2}/secret2_replica", "keystatus") == "unavailable"
        names = {v["name"] for v in b.ok("GET", "/api/volume", params={"pool_id": pool_b2["id"]})["volumes"]}
        assert names == {"plain2_replica", "secret2_replica"}
    finally:
        for rel in a.ok("GET", "/api/relationship")["relationships"]:
            if rel["remote_pool_id"] == pool_b2["id"]:
                a.ok("DELETE", f"/api/relationship/{rel['id']}")
        for v in b.ok("GET", "/api/volume", params={"pool_id": pool_b2["id"]})["volumes"]:
            b.ok("DELETE", f"/api/volume/{v['id']}")
        b.ok("DELETE", f"/api/pool/{pool_b2['id']}")


def _receive_processes(snap_name: str, timeout: float = 60) -> tuple[int, int, list[int]]:
    """The partner's side of a stream of `snap_name`, once its `zfs receive` runs: (the sshd
    session carrying it, its serve process, the zfs receive, which the partner's server runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", "vsnap.worker.serve"], capture_output=True, text=True).stdout
        receives = subprocess.run(["pgrep", "-f", f"^zfs receive .*@{snap_name}$"], capture_output=True,
                                  text=True).stdout.split()
        for pid in (int(p) for p in out.split()):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if receives and any(e.startswith(b"SSH_ORIGINAL_COMMAND=recv ") and e.split()[2] == snap_name.encode()
                                for e in environ):
                return ppid, pid, [int(r) for r in receives]
        time.sleep(0.05)
    raise AssertionError(f"no receive of {snap_name} appeared")


@pytest.mark.guest
@pytest.mark.parametrize("settled_by", ["the next session", "a restart of the partner"])
def test_a_raw_first_receive_killed_half_way_leaves_the_replica_whole(enc, settled_by):
    """kill -9 of the partner's receive after the empty replica made way for the raw stream:
    the replica is made again (empty), by the next request for it or at the partner's next
    start, and the next session sends the stream again."""
    a, b = enc["a"], enc["b"]
    name = "crash1" if settled_by == "the next session" else "crash2"
    vol = a.ok("POST", "/api/volume", json={"name": name, "volume_type": "filesystem", "pool_id": enc["enc"]["id"]})
    with open(f"/vsnap/{enc['enc']['name']}/{name}/f", "wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))
    rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": enc["partner"]["id"]})
    replica = f"{enc['pool_b']['name']}/{name}_replica"
    s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "killed"})
    session, serve, children = _receive_processes("killed")
    os.kill(session, signal.SIGSTOP)  # the stream stops where it is
    for pid in (serve, *children, session):
        os.kill(pid, signal.SIGKILL)
    ended = wait_session(a, s["id"], timeout=120)
    assert ended["status"] == "FAILED", ended
    # ZFS removed the half-received dataset; the empty replica is not there either (or made
    # again already, if a request for it came)
    listed = subprocess.run(["zfs", "list", "-H", "-o", "name", replica], capture_output=True, text=True)
    assert listed.returncode != 0 or zfs_get(replica, "encryption") == "off", listed.stdout
    if settled_by == "a restart of the partner":
        b.stop(signal.SIGKILL)
        b.start(timeout=240)
        assert zfs_get(replica, "encryption") == "off" and zfs_get(replica, "readonly") == "on"  # empty again
    again = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"remote_snap_name": "again"})
    done = wait_session(a, again["id"], timeout=300)
    assert done["status"] == "COMPLETED", done
    assert zfs_get(replica, "encryption") == "aes-256-gcm" and zfs_get(replica, "keystatus") == "unavailable"
    assert name + "_replica" in {v["name"] for v in b.ok("GET", "/api/volume")["volumes"]}
    snaps = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", replica],
                           capture_output=True, text=True, check=True).stdout.split()
    assert snaps == [f"{replica}@again"]
