"""Compressed and resumed replication streams (OpenZFS only: run in the kernel lab's guest with
`make guest-bench`), each against the raw pipeline doing the same, side by side, in one run.

Two appliances on one machine (the test states, as `make guest-suite` sets them up), and a
volume on A per measurement:

- compressed: data that lz4 halves (each 128 KiB record: 48 KiB of noise, 80 KiB of zeros).
  The raw pipeline `zfs send | ssh | zfs receive` plain and with `-c -L -e`, and a session of a
  relationship (which uses `-c -L -e` when both sides can). Bytes on the wire against the
  snapshot's size on disk, and seconds.
- resumed: incompressible data. The raw pipeline breaks off half way (`head -c`) into
  `zfs receive -s`, then goes on with `zfs send -t <token>`; a session with a bandwidth limit is
  canceled half way, and the next session of the same snapshot resumes. Bytes and seconds of
  what is sent after the break, and the full raw send for comparison.

Each round's copies are destroyed before the next; the order of raw and API alternates from
round to round. Reports medians.

    BENCH_SIZE_MIB (256)  size of each volume's data
    BENCH_ROUNDS (2)      repetitions of each measurement
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
sys.path.insert(0, str(ROOT / "bench"))

from bench_replication import (  # noqa: E402
    BENCH_KEY,
    CIPHER,
    PORT_B,
    SSH_B,
    SSH_OPTIONS,
    authorize_bench_key,
    destroy,
    sh,
    start_pair,
    tear_down,
    wait,
)

SIZE = int(os.environ.get("BENCH_SIZE_MIB", 256)) << 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
POOL_A, POOL_B = "vbenchsa", "vbenchsb"
SCRATCH = f"{POOL_B}/benchscratch"  # below a volume: B's catalog never adopts what lands here


def remote_receive(*args: str) -> list[str]:
    return ["ssh", "-T", "-i", str(BENCH_KEY), "-p", str(SSH_B), "-c", CIPHER, *SSH_OPTIONS, "root@127.0.0.1",
            "zfs", "receive", *args]


def raw(send_args: list[str], receive_args: list[str], limit: int | None = None) -> tuple[float, int]:
    """Seconds and bytes of `zfs send ARGS | [head -c LIMIT |] ssh zfs receive ARGS`."""
    t = time.monotonic()
    send = subprocess.Popen(["zfs", "send", *send_args], stdout=subprocess.PIPE)
    recv = subprocess.Popen(remote_receive(*receive_args), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    moved = 0
    assert send.stdout is not None and recv.stdin is not None
    while chunk := send.stdout.read(1 << 20):
        if limit is not None and moved + len(chunk) > limit:
            chunk = chunk[:limit - moved]
        recv.stdin.write(chunk)
        moved += len(chunk)
        if limit is not None and moved >= limit:
            break
    recv.stdin.close()
    if limit is not None:
        send.kill()  # the rest of the stream is not wanted: the break
    send.wait()
    err = recv.stderr.read().decode() if recv.stderr else ""
    rc = recv.wait()
    if limit is None and (rc or send.returncode):
        raise SystemExit(f"raw pipeline failed: {err}")
    return time.monotonic() - t, moved


def write_data(path: str, compressible: bool) -> None:
    with open(path, "wb") as f:
        for _ in range(SIZE >> 17):
            f.write(os.urandom(48 << 10) + bytes(80 << 10) if compressible else os.urandom(128 << 10))
        f.flush()
        os.fsync(f.fileno())


def volume_with_snapshot(a, pool: dict, name: str, compressible: bool) -> tuple[dict, dict, str]:
    """A filesystem volume on A holding SIZE bytes, and a snapshot of it: (volume, snapshot,
    the snapshot's ZFS name)."""
    vol = a.ok("POST", "/api/volume", json={"name": name, "volume_type": "filesystem", "pool_id": pool["id"]})
    write_data(f"/vsnap/{POOL_A}/{name}/data.bin", compressible)
    snap = a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "s"})
    return vol, snap, f"{POOL_A}/{name}@s"


def session(a, rel_id: str, **body) -> dict:
    s = a.ok("POST", f"/api/relationship/{rel_id}/session", json=body)
    return wait(a, s["id"])


def compressed_round(a, pool_a: dict, partner: dict, round_: int, results: dict) -> None:
    vol, snap, source = volume_with_snapshot(a, pool_a, f"comp{round_}", compressible=True)
    results["on_disk"].append(int(sh("zfs", "get", "-Hpo", "value", "referenced", source).stdout))
    results["logical"].append(int(sh("zfs", "get", "-Hpo", "value", "logicalreferenced", source).stdout))
    rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": partner["id"]})
    steps = ["plain", "compressed", "api"]
    for kind in steps if round_ % 2 == 0 else reversed(steps):
        if kind == "api":
            t = time.monotonic()
            done = session(a, rel["id"], snap_id=snap["id"])
            assert done["status"] == "COMPLETED", done
            results["api"].append((time.monotonic() - t, int(done["size_sent"])))
        else:
            flags = ["-c", "-L", "-e"] if kind == "compressed" else []
            results[kind].append(raw([*flags, source], ["-F", f"{SCRATCH}/{kind}{round_}@s"]))
            destroy(f"{SCRATCH}/{kind}{round_}")
    a.ok("DELETE", f"/api/relationship/{rel['id']}")
    a.ok("DELETE", f"/api/volume/{vol['id']}")


def resumed_round(a, pool_a: dict, partner: dict, round_: int, results: dict) -> None:
    vol, snap, source = volume_with_snapshot(a, pool_a, f"res{round_}", compressible=False)
    target = f"{SCRATCH}/resumed{round_}"
    results["full"].append(raw([source], ["-F", f"{target}@s"])[0])
    destroy(target)
    rel = a.ok("POST", f"/api/volume/{vol['id']}/relationship", json={"partner_id": partner["id"]})
    for kind in ("raw", "api") if round_ % 2 == 0 else ("api", "raw"):
        if kind == "raw":
            raw([source], ["-s", "-F", f"{target}@s"], limit=SIZE // 2)  # breaks off half way
            token = sh("zfs", "get", "-Hpo", "value", "receive_resume_token", target).stdout.strip()
            results["raw"].append(raw(["-t", token], ["-s", f"{target}@s"]))
            destroy(target)
        else:
            a.ok("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": 16 << 20})
            s = a.ok("POST", f"/api/relationship/{rel['id']}/session", json={"snap_id": snap["id"]})
            while int(a.ok("GET", f"/api/session/{s['id']}")["size_sent"] or 0) < SIZE // 2:
                time.sleep(0.1)
            a.ok("POST", f"/api/session/{s['id']}", json={"action": "cancel"})
            a.ok("PUT", f"/api/relationship/{rel['id']}", json={"max_rate": None})
            t = time.monotonic()
            done = session(a, rel["id"], snap_id=snap["id"])
            assert done["status"] == "COMPLETED" and "resumed" in done["message"], done
            results["api"].append((time.monotonic() - t, int(done["size_sent"])))
            results["total"].append(int(done["size_sent_total"]))
    a.ok("DELETE", f"/api/relationship/{rel['id']}")
    a.ok("DELETE", f"/api/volume/{vol['id']}")


def main():
    admin, a, b = start_pair("vsnapbenchs-admin")
    made = []
    try:
        for server in (a, b):
            server.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
            if "compressed_send" not in server.ok("GET", "/api/system")["features"]:
                raise SystemExit("this ZFS has no compressed or resumable streams: run it in the kernel lab "
                                 "(make guest-bench)")
        pa = a.ok("POST", "/api/pool", json={"name": POOL_A, "pool_type": "raid0",
                                              "disk_list": [d["uuid"] for d in a.ok("GET", "/api/disk")["disks"]]})
        made.append((a, pa))
        pb = b.ok("POST", "/api/pool", json={"name": POOL_B, "pool_type": "raid0",
                                              "disk_list": [d["uuid"] for d in b.ok("GET", "/api/disk")["disks"]]})
        made.append((b, pb))
        sh("zfs", "create", SCRATCH)
        b.ok("GET", "/api/volume")
        partner = a.ok("POST", "/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": admin.name,
                                                     "remote_pass": admin.password, "remote_api_port": PORT_B})
        authorize_bench_key()
        comp: dict[str, list] = {"plain": [], "compressed": [], "api": [], "on_disk": [], "logical": []}
        res: dict[str, list] = {"full": [], "raw": [], "api": [], "total": []}
        for round_ in range(ROUNDS):
            compressed_round(a, pa, partner, round_, comp)
            resumed_round(a, pa, partner, round_, res)
            print(f"round {round_ + 1}/{ROUNDS}: compressed {comp}; resumed {res}", flush=True)

        def med(pairs, i):
            return statistics.median(p[i] for p in pairs)

        on_disk, logical = statistics.median(comp["on_disk"]), statistics.median(comp["logical"])
        print(f"compressed: {SIZE >> 20} MiB that lz4 compresses to {on_disk / logical:.2f} of its size "
              f"({int(on_disk)} bytes on disk); median of {ROUNDS}")
        print("| stream | bytes | bytes / on disk | s | API/raw -c (speed) |")
        print("| --- | --- | --- | --- | --- |")
        for kind, label in (("plain", "raw, plain"), ("compressed", "raw, -c -L -e"), ("api", "session")):
            print(f"| {label} | {int(med(comp[kind], 1))} | {med(comp[kind], 1) / on_disk:.2f} | "
                  f"{med(comp[kind], 0):.2f} | {med(comp['compressed'], 0) / med(comp[kind], 0):.2f} |")
        print(f"resumed: {SIZE >> 20} MiB of random data broken off half way; median of {ROUNDS}")
        print("| transfer | bytes after the break | s | API/raw (speed) |")
        print("| --- | --- | --- | --- |")
        print(f"| raw full send, for comparison | {SIZE} | {statistics.median(res['full']):.2f} | |")
        print(f"| raw `zfs send -t` | {int(med(res['raw'], 1))} | {med(res['raw'], 0):.2f} | |")
        print(f"| session resuming | {int(med(res['api'], 1))} | {med(res['api'], 0):.2f} | "
              f"{med(res['raw'], 0) / med(res['api'], 0):.2f} |")
        print(f"session: bytes after the break / whole stream: "
              f"{med(res['api'], 1) / statistics.median(res['total']):.2f}")
    finally:
        subprocess.run(["zfs", "destroy", "-r", SCRATCH], capture_output=True)
        tear_down(a, b, made, admin)


if __name__ == "__main__":
    main()
