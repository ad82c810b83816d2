"""Replication throughput: a session through the API against the raw pipeline
`zfs send | ssh | zfs receive` and against syncoid (Debian package sanoid), on the same data,
side by side, in one run.

Runs two appliances on this machine (the test lab's states, see the Makefile) and a volume of
incompressible data on A. Each round: snapshot `base<N>`; the full transfer three ways (raw
pipeline and syncoid into scratch datasets on B, a session of a fresh relationship into its
replica); then a share of the data is rewritten, snapshot `changed<N>`, and the incremental
three ways. The order of the three rotates from round to round, so none is always the first
to read the data; each round's snapshots and copies are destroyed before the next, so every
full transfer is of a dataset with that one snapshot (what syncoid sends in full is the oldest
snapshot). Reports medians and the throughput ratios API/raw and API/syncoid (> 1: the API is
faster). Run with `make bench`.

syncoid runs with --no-sync-snap (the snapshots are ours), --compress=none (the data is
incompressible; the raw pipeline and the API do not compress either), --quiet (no pv meter),
--no-resume (zfs-fuse has no resumable receive), the same ssh cipher, key and port as the raw
pipeline, and otherwise its defaults (mbuffer on both sides when installed, a rollback of the
target before an incremental). syncoid 2.1.0 (Debian 12) lists a remote host's snapshots with
`zfs get -t`, which zfs-fuse lacks, and its fallback for a remote host puts ssh twice in the
command line; the bench runs a copy of syncoid with that one line removed (OpenZFS needs no
fallback).

B holds three full copies at once (raw, syncoid, replica): at 1 GiB its 2-disk pool needs
disks larger than the lab's default 1G, e.g. a lab made with VSNAP_LAB_DISK_SIZE=3G (the
bench says so before it starts, when they are too small).

    BENCH_SIZE_MIB (1024)  size of the volume's data
    BENCH_CHANGE_PCT (5)   share rewritten before the incremental
    BENCH_ROUNDS (3)       repetitions of each measurement
    BENCH_POLL (0.1)       seconds between looks at a session's status (one kept-alive connection)
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.appliance import Appliance  # noqa: E402
from tests.integration.conftest import OsAccount  # noqa: E402

STATE_A = Path(os.environ.get("VSNAP_STATE", "/var/lib/vsnap-test"))
STATE_B = Path(os.environ.get("VSNAP_STATE_B", "/var/lib/vsnap-test-b"))
PORT_A, PORT_B = int(os.environ.get("VSNAP_PORT", 8910)), int(os.environ.get("VSNAP_PORT_B", 8920))
SSH_A, SSH_B = int(os.environ.get("VSNAP_SSH_PORT", 8932)), int(os.environ.get("VSNAP_SSH_PORT_B", 8942))
SIZE = int(os.environ.get("BENCH_SIZE_MIB", 1024)) << 20
CHANGE = int(os.environ.get("BENCH_CHANGE_PCT", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
POLL = float(os.environ.get("BENCH_POLL", 0.1))
POOL_A, POOL_B = "vbenchra", "vbenchrb"
SCRATCH = f"{POOL_B}/benchscratch"  # below a volume: B's catalog never adopts what lands here
BENCH_KEY = STATE_A / "ssh" / "bench_ed25519"
MARK = "vsnap-bench-raw"
CIPHER = "aes128-gcm@openssh.com"
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR"]
KINDS = ("raw", "syncoid", "api")


def sh(*argv, **kw):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


def wait(server, session_id):
    """Polls every POLL seconds over one kept-alive connection: a new TLS connection per poll
    cost the server about 25 ms of CPU each (12 ms kept alive), a fifth of a core at 20 polls
    a second, taken from the transfer being measured on this 2-core machine."""
    with requests.Session() as poller:
        while True:
            response = poller.get(f"{server.base}/api/session/{session_id}", verify=server.cert,
                                  auth=server.account.auth, timeout=120)
            assert response.status_code == 200, response.text
            s = response.json()
            if s["status"] in ("COMPLETED", "FAILED"):
                return s
            time.sleep(POLL)


def timed_session(a, rel_id, snap_id):
    t = time.monotonic()
    s = a.ok("POST", f"/api/relationship/{rel_id}/session", json={"snap_id": snap_id})
    s = wait(a, s["id"])
    if s["status"] != "COMPLETED":
        raise SystemExit(f"session failed: {s['message']}")
    return time.monotonic() - t, int(s["size_sent"])


def raw_pipeline(send_args: list[str], target: str, full: bool) -> float:
    ssh = ["ssh", "-T", "-i", str(BENCH_KEY), "-p", str(SSH_B), "-c", CIPHER, *SSH_OPTIONS,
           "root@127.0.0.1", "zfs", "receive", *(["-F"] if full else []), target]
    t = time.monotonic()
    send = subprocess.Popen(["zfs", "send", *send_args], stdout=subprocess.PIPE)
    recv = subprocess.run(ssh, stdin=send.stdout, capture_output=True, text=True)
    send.stdout.close()
    if send.wait() or recv.returncode:
        raise SystemExit(f"raw pipeline failed: {recv.stderr}")
    return time.monotonic() - t


def patched_syncoid(workdir: Path) -> list[str]:
    """syncoid, with its remote snapshot-listing fallback fixed (see the module's doc)."""
    path = shutil.which("syncoid")
    if path is None:
        raise SystemExit("syncoid is not installed: apt-get install --no-install-recommends sanoid")
    text = Path(path).read_text()
    start = text.find("sub getsnapsfallback()")
    bug = '\t\t$rhost = "$sshcmd $rhost";\n'
    at = text.find(bug, start) if start >= 0 else -1
    if at < 0:
        return [path]  # a version without the bug
    copy = workdir / "syncoid"
    copy.write_text(text[:at] + text[at + len(bug):])
    return ["perl", str(copy)]


def syncoid(command: list[str], target: str) -> float:
    argv = [*command, "--no-sync-snap", "--no-privilege-elevation", "--compress=none", "--quiet", "--no-resume",
            f"--sshport={SSH_B}", f"--sshkey={BENCH_KEY}", f"--sshcipher={CIPHER}",
            *[f"--sshoption={o}" for o in SSH_OPTIONS[1::2]], f"{POOL_A}/bench", f"root@127.0.0.1:{target}"]
    t = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    seconds = time.monotonic() - t
    if out.returncode:
        raise SystemExit(f"syncoid failed ({out.returncode}): {out.stdout}{out.stderr}")
    return seconds


def destroy(dataset: str) -> None:
    """zfs-fuse refuses for a moment to destroy a dataset it just unmounted ('busy')."""
    for attempt in range(20):
        subprocess.run(["zfs", "unmount", dataset], capture_output=True)
        out = subprocess.run(["zfs", "destroy", "-r", dataset], capture_output=True, text=True)
        if out.returncode == 0 or "does not exist" in out.stderr:
            return
        time.sleep(0.5)
    raise SystemExit(f"cannot destroy {dataset}: {out.stderr}")


def check_space(pool: str, needed: float, state: Path) -> None:
    free = int(sh("zfs", "get", "-Hp", "-o", "value", "available", pool).stdout)
    if free < needed:
        raise SystemExit(
            f"{pool} has {free / 2**30:.1f} GiB free; {needed / 2**30:.1f} GiB are needed for BENCH_SIZE_MIB="
            f"{SIZE >> 20}. Make the lab of {state} with larger disks (lab/lab.sh: VSNAP_LAB_DISK_SIZE, e.g. 3G, "
            "applies to disk images it creates) or set BENCH_SIZE_MIB lower.")


def change_data(path: str) -> None:
    """Rewrites CHANGE% of the file, spread through it."""
    with open(path, "r+b") as f:
        for i in range(0, SIZE >> 20, max(1, 100 // CHANGE)):
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())


def authorize_bench_key():
    if not BENCH_KEY.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", MARK, "-f", str(BENCH_KEY))
    keys = STATE_B / "ssh" / "authorized_keys"
    lines = [line for line in keys.read_text().splitlines() if MARK not in line]
    keys.write_text("\n".join(lines + [Path(f"{BENCH_KEY}.pub").read_text().strip()]) + "\n")


def unauthorize_bench_key():
    keys = STATE_B / "ssh" / "authorized_keys"
    keys.write_text("".join(f"{line}\n" for line in keys.read_text().splitlines() if MARK not in line))


def start_pair(account: str):
    """An admin account of its own and the two appliances, started: (admin, a, b)."""
    admin = OsAccount(account, ["vsnap"])
    a = Appliance(STATE_A, PORT_A, ssh_port=SSH_A, log_name="bench")
    b = Appliance(STATE_B, PORT_B, ssh_port=SSH_B, log_name="bench-b")
    a.account = b.account = admin
    a.start(), b.start()
    return admin, a, b


def main():
    admin, a, b = start_pair("vsnapbenchr-admin")
    made = []
    workdir = Path(tempfile.mkdtemp(prefix="vsnap-bench-"))
    try:
        syncoid_cmd = patched_syncoid(workdir)
        for server in (a, b):
            server.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
        disks_a = [d["uuid"] for d in a.ok("GET", "/api/disk")["disks"]][:2]
        disks_b = [d["uuid"] for d in b.ok("GET", "/api/disk")["disks"]][:2]
        pa = a.ok("POST", "/api/pool", json={"name": POOL_A, "pool_type": "raid0", "disk_list": disks_a})
        made.append((a, pa))
        pb = b.ok("POST", "/api/pool", json={"name": POOL_B, "pool_type": "raid0", "disk_list": disks_b})
        made.append((b, pb))
        check_space(POOL_A, 1.2 * SIZE, STATE_A)  # the data, and what each round's change keeps
        check_space(POOL_B, 3.3 * SIZE, STATE_B)  # three full copies at once (raw, syncoid, replica)
        vol = a.ok("POST", "/api/volume", json={"name": "bench", "volume_type": "filesystem", "pool_id": pa["id"]})
        sh("zfs", "create", SCRATCH)
        b.ok("GET", "/api/volume")  # B adopts the scratch dataset now, not during a measurement
        data = f"/vsnap/{POOL_A}/bench/data.bin"
        with open(data, "wb") as f:
            for _ in range(SIZE >> 20):
                f.write(os.urandom(1 << 20))
        partner = a.ok("POST", "/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": admin.name,
                                                     "remote_pass": admin.password, "remote_api_port": PORT_B})
        authorize_bench_key()
        seconds = {t: {k: [] for k in KINDS} for t in ("full", "incremental")}
        sent = {"full": [], "incremental": []}
        for round_ in range(ROUNDS):
            order = KINDS[round_ % 3:] + KINDS[:round_ % 3]
            base = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": f"base{round_}"})
            rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": partner["id"]})
            raw, copy = f"{SCRATCH}/raw{round_}", f"{SCRATCH}/syncoid{round_}"
            for kind in order:
                if kind == "raw":
                    seconds["full"]["raw"].append(raw_pipeline([f"{POOL_A}/bench@base{round_}"],
                                                               f"{raw}@base{round_}", True))
                elif kind == "syncoid":
                    seconds["full"]["syncoid"].append(syncoid(syncoid_cmd, copy))
                else:
                    s, n = timed_session(a, rel["id"], base["id"])
                    seconds["full"]["api"].append(s)
                    sent["full"].append(n)
            change_data(data)
            changed = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": f"changed{round_}"})
            for kind in order:
                if kind == "raw":
                    seconds["incremental"]["raw"].append(raw_pipeline(
                        ["-i", f"@base{round_}", f"{POOL_A}/bench@changed{round_}"], f"{raw}@changed{round_}", False))
                elif kind == "syncoid":
                    seconds["incremental"]["syncoid"].append(syncoid(syncoid_cmd, copy))
                else:
                    s, n = timed_session(a, rel["id"], changed["id"])
                    seconds["incremental"]["api"].append(s)
                    sent["incremental"].append(n)
            print(f"round {round_ + 1}/{ROUNDS} ({', '.join(order)}): "
                  + "; ".join(f"{t} " + " ".join(f"{k} {seconds[t][k][-1]:.2f}s" for k in KINDS)
                              for t in seconds), flush=True)
            a.ok("DELETE", f"/api/relationship/{rel['id']}")
            destroy(raw)
            destroy(copy)
            for snap in (base, changed):
                response = a.request("DELETE", f"/api/snapshot/{snap['id']}")
                assert response.status_code in (200, 204), response.text
            left = sh("zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", f"{POOL_A}/bench").stdout.split()
            assert not left, f"snapshots left on the source: {left}"  # syncoid's next full sends the oldest
        print(f"replication of {SIZE >> 20} MiB of random data, {CHANGE}% changed for the incremental; "
              f"median of {ROUNDS}")
        print("| transfer | bytes | raw s | syncoid s | API s | API/raw | API/syncoid |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for kind, r in seconds.items():
            raw, sync, api = (statistics.median(r[k]) for k in KINDS)
            print(f"| {kind} | {int(statistics.median(sent[kind]))} | {raw:.2f} | {sync:.2f} | {api:.2f} "
                  f"| {raw / api:.2f} | {sync / api:.2f} |")
        print(f"incremental bytes / changed bytes: "
              f"{statistics.median(sent['incremental']) / (SIZE * CHANGE / 100):.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        tear_down(a, b, made, admin)


def tear_down(a, b, made: list, admin) -> None:
    """What a benchmark made goes: the bench key, relationships, partners, the pools in
    `made` ((server, pool) pairs), the servers and the account."""
    unauthorize_bench_key()
    for server in (a, b):
        for rel in server.ok("GET", "/api/relationship")["relationships"]:
            server.delete(f"/api/relationship/{rel['id']}")
        for p in server.ok("GET", "/api/partner")["partners"]:
            server.delete(f"/api/partner/{p['id']}")
    for server, pool in reversed(made):
        server.delete(f"/api/pool/{pool['id']}")
    a.stop(), b.stop()
    admin.remove()


if __name__ == "__main__":
    main()
