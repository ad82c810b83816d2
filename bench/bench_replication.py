"""Replication throughput: a session through the API against the raw pipeline
`zfs send | ssh | zfs receive` on the same data, side by side, in one run.

Runs two appliances on this machine (the test lab's states, see the Makefile), a volume of
incompressible data on A, and alternates: raw pipeline into a scratch dataset on B, then a
full session into the replica; then the same after changing a share of the data
(incremental). Reports medians and the ratio session/raw. Run with `make bench`.

    BENCH_SIZE_MIB (256)   size of the volume's data
    BENCH_CHANGE_PCT (5)   share rewritten before the incremental round
    BENCH_ROUNDS (3)       repetitions of each measurement
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.appliance import Appliance  # noqa: E402
from tests.integration.conftest import OsAccount  # noqa: E402

STATE_A = Path(os.environ.get("VSNAP_STATE", "/var/lib/vsnap-test"))
STATE_B = Path(os.environ.get("VSNAP_STATE_B", "/var/lib/vsnap-test-b"))
PORT_A, PORT_B = int(os.environ.get("VSNAP_PORT", 8910)), int(os.environ.get("VSNAP_PORT_B", 8920))
SSH_A, SSH_B = int(os.environ.get("VSNAP_SSH_PORT", 8932)), int(os.environ.get("VSNAP_SSH_PORT_B", 8942))
SIZE = int(os.environ.get("BENCH_SIZE_MIB", 256)) << 20
CHANGE = int(os.environ.get("BENCH_CHANGE_PCT", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
POOL_A, POOL_B = "vbenchra", "vbenchrb"
BENCH_KEY = STATE_A / "ssh" / "bench_ed25519"
MARK = "vsnap-bench-raw"


def sh(*argv, **kw):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


def wait(server, session_id):
    while True:
        s = server.ok("GET", f"/api/session/{session_id}")
        if s["status"] in ("COMPLETED", "FAILED"):
            return s
        time.sleep(0.05)


def timed_session(a, rel_id, snap_id):
    t = time.monotonic()
    s = a.ok("POST", f"/api/relationship/{rel_id}/session", json={"snap_id": snap_id})
    s = wait(a, s["id"])
    if s["status"] != "COMPLETED":
        raise SystemExit(f"session failed: {s['message']}")
    return time.monotonic() - t, int(s["size_sent"])


def raw_pipeline(send_args: list[str], target: str, full: bool) -> float:
    ssh = ["ssh", "-T", "-i", str(BENCH_KEY), "-p", str(SSH_B), "-c", "aes128-gcm@openssh.com",
           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "LogLevel=ERROR", "root@127.0.0.1", "zfs", "receive", *(["-F"] if full else []), target]
    t = time.monotonic()
    send = subprocess.Popen(["zfs", "send", *send_args], stdout=subprocess.PIPE)
    recv = subprocess.run(ssh, stdin=send.stdout, capture_output=True, text=True)
    send.stdout.close()
    if send.wait() or recv.returncode:
        raise SystemExit(f"raw pipeline failed: {recv.stderr}")
    return time.monotonic() - t


def authorize_bench_key():
    if not BENCH_KEY.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", MARK, "-f", str(BENCH_KEY))
    keys = STATE_B / "ssh" / "authorized_keys"
    lines = [l for l in keys.read_text().splitlines() if MARK not in l]
    keys.write_text("\n".join(lines + [Path(f"{BENCH_KEY}.pub").read_text().strip()]) + "\n")


def unauthorize_bench_key():
    keys = STATE_B / "ssh" / "authorized_keys"
    keys.write_text("".join(f"{l}\n" for l in keys.read_text().splitlines() if MARK not in l))


def main():
    admin = OsAccount("vsnapbench-admin", ["vsnap"])
    a = Appliance(STATE_A, PORT_A, ssh_port=SSH_A, log_name="bench")
    b = Appliance(STATE_B, PORT_B, ssh_port=SSH_B, log_name="bench-b")
    a.account = b.account = admin
    a.start(), b.start()
    made = []
    try:
        for server in (a, b):
            server.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
        disks_a = [d["uuid"] for d in a.ok("GET", "/api/disk")["disks"]][:2]
        disks_b = [d["uuid"] for d in b.ok("GET", "/api/disk")["disks"]][:2]
        pa = a.ok("POST", "/api/pool", json={"name": POOL_A, "pool_type": "raid0", "disk_list": disks_a})
        made.append((a, pa))
        pb = b.ok("POST", "/api/pool", json={"name": POOL_B, "pool_type": "raid0", "disk_list": disks_b})
        made.append((b, pb))
        vol = a.ok("POST", "/api/volume", json={"name": "bench", "volume_type": "filesystem", "pool_id": pa["id"]})
        data = f"/vsnap/{POOL_A}/bench/data.bin"
        with open(data, "wb") as f:
            for _ in range(SIZE >> 20):
                f.write(os.urandom(1 << 20))
        partner = a.ok("POST", "/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": admin.name,
                                                     "remote_pass": admin.password, "remote_api_port": PORT_B})
        authorize_bench_key()
        base = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "base"})
        with open(data, "r+b") as f:  # the incremental round's change, spread through the file
            for i in range(0, SIZE >> 20, max(1, 100 // CHANGE)):
                f.seek(i << 20)
                f.write(os.urandom(1 << 20))
        changed = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "changed"})
        rows = {"full": {"raw": [], "session": []}, "incremental": {"raw": [], "session": []}}
        sent = {}
        for round_ in range(ROUNDS):
            # raw, full then incremental, into a scratch dataset
            raw = f"{POOL_B}/raw{round_}"
            rows["full"]["raw"].append(raw_pipeline([f"{POOL_A}/bench@base"], f"{raw}@base", True))
            rows["incremental"]["raw"].append(raw_pipeline(["-i", "@base", f"{POOL_A}/bench@changed"],
                                                           f"{raw}@changed", False))
            # the same through the API: a fresh relationship each round
            rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": partner["id"]})
            seconds, sent["full"] = timed_session(a, rel["id"], base["id"])
            rows["full"]["session"].append(seconds)
            seconds, sent["incremental"] = timed_session(a, rel["id"], changed["id"])
            rows["incremental"]["session"].append(seconds)
            a.ok("DELETE", f"/api/relationship/{rel['id']}")
        print(f"replication of {SIZE >> 20} MiB of random data, {CHANGE}% changed for the incremental; "
              f"median of {ROUNDS}")
        print(f"{'transfer':<12} {'bytes sent':>12} {'raw s':>8} {'raw MB/s':>9} {'API s':>8} "
              f"{'API MB/s':>9} {'API/raw':>8}")
        for kind, r in rows.items():
            raw, api = statistics.median(r["raw"]), statistics.median(r["session"])
            mb = sent[kind] / 1e6
            print(f"{kind:<12} {sent[kind]:>12} {raw:>8.2f} {mb / raw:>9.1f} {api:>8.2f} {mb / api:>9.1f} "
                  f"{raw / api:>8.2f}")
        print(f"incremental bytes / changed bytes: {sent['incremental'] / (SIZE * CHANGE / 100):.2f}")
    finally:
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
