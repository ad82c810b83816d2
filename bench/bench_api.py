"""API against the raw commands, side by side in one run on the test appliance (issue 9):

1. snapshot create through the API vs `zfs snapshot` on the same volume (median of 50);
2. GET /api/snapshot with 1,000 and 10,000 snapshots on 100 volumes vs `zfs list -t snapshot`;
3. authenticated GET /api/volume (100 volumes) under 32 concurrent clients for 30 s (wrk) vs
   the same gunicorn serving a trivial endpoint without auth (the ceiling);
4. the server's resident memory after the listing and the load run.

Run with `make bench` (or BENCH_ONLY=snapshot,list,load to pick). Figures go to stdout; the
latest are kept in bench/RESULTS.md.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
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

STATE = Path(os.environ.get("VSNAP_STATE", "/var/lib/vsnap-test"))
PORT = int(os.environ.get("VSNAP_PORT", 8910))
POOL = "vbenchapi"
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "snapshot,list,load").split(",")))
SNAP_ROUNDS = int(os.environ.get("BENCH_SNAP_ROUNDS", 50))
LOAD_SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", 30))
WARMUP_SECONDS = 3
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")  # py-spy profiles of the server's workers
PROFILE_FORMAT = os.environ.get("BENCH_PROFILE_FORMAT", "flamegraph")  # or raw, speedscope


def server_pids(a: Appliance) -> list[int]:
    """The gunicorn master and its workers."""
    children = subprocess.run(["pgrep", "-P", str(a.proc.pid)], capture_output=True, text=True).stdout.split()
    return [a.proc.pid] + [int(p) for p in children]


def profile_workers(a: Appliance, label: str) -> subprocess.Popen | None:
    """With BENCH_PROFILE_DIR set, py-spy records every server worker for the next
    measurement (LOAD_SECONDS): where the time goes, to fix the cause."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not PROFILE_DIR or not Path(py_spy).exists():
        return None
    Path(PROFILE_DIR).mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(LOAD_SECONDS),
                               "--format", PROFILE_FORMAT, "--nonblocking",
                               "--output", f"{PROFILE_DIR}/{label}-{pid}.{PROFILE_FORMAT}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid in server_pids(a)[1:]]
    return procs[0] if procs else None


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True).stdout


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench_snapshot_create(a: Appliance, vol: dict) -> list[str]:
    dataset = f"{POOL}/{vol['name']}"
    api, raw = [], []
    for i in range(SNAP_ROUNDS):  # interleaved, so both see the same machine
        raw.append(timed(lambda: zfs("snapshot", f"{dataset}@raw{i}")))
        api.append(timed(lambda: a.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": f"api{i}"})))
    ratio = statistics.median(api) / statistics.median(raw)
    return [f"| snapshot create, median of {SNAP_ROUNDS} | {median_ms(raw):.1f} ms | {median_ms(api):.1f} ms "
            f"| {ratio:.2f} | <= 1.25 |"]


def make_snapshots(volumes: list[str], per_volume: int, start: int) -> None:
    for name in volumes:
        for i in range(start, start + per_volume):
            zfs("snapshot", f"{POOL}/{name}@s{i}")


def bench_listing(a: Appliance, volumes: list[str]) -> list[str]:
    rows = []
    api_by_count = {}
    made = 0
    for total in (1000, 10000):
        per_volume = total // len(volumes) - made
        make_snapshots(volumes, per_volume, made)
        made += per_volume
        a.ok("GET", "/api/snapshot", timeout=3600)  # the first read adopts the new snapshots: not measured
        raw = [timed(lambda: zfs("list", "-H", "-t", "snapshot", "-r", POOL)) for _ in range(5)]
        api = [timed(lambda: a.ok("GET", "/api/snapshot", timeout=600)) for _ in range(5)]
        count = a.ok("GET", "/api/snapshot")["total"]
        api_by_count[total] = statistics.median(api)
        rows.append(f"| GET /api/snapshot, {count} snapshots, median of 5 | {median_ms(raw):.0f} ms "
                    f"| {median_ms(api):.0f} ms | {statistics.median(api) / statistics.median(raw):.2f} | <= 0.5 |")
    growth = api_by_count[10000] / api_by_count[1000]
    rows.append(f"| GET /api/snapshot, time for 10,000 / time for 1,000 | | | {growth:.1f}x | <= 12x |")
    return rows


def wrk(url: str, headers: list[str], seconds: int = LOAD_SECONDS) -> dict:
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], check=True, capture_output=True, text=True).stdout

    def latency(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": latency("50"),
            "p99": latency("99"), "errors": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "none"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ceiling_server(tmp: Path, port: int) -> subprocess.Popen:
    """The same gunicorn settings serving a trivial WSGI app with no auth."""
    (tmp / "trivial.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [b'{}']\n")
    env = {**os.environ, "VSNAP_STATE": str(STATE), "VSNAP_PORT": str(port), "PYTHONPATH": str(tmp),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c",
                             str(ROOT / "vsnap" / "gunicorn_conf.py"), "trivial:app"], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(3)
    return proc


def bench_load(a: Appliance, admin: OsAccount) -> list[str]:
    if not shutil.which("wrk"):
        return ["| load | wrk is not installed (apt-get install wrk) | | | |"]
    token = base64.b64encode(f"{admin.name}:{admin.password}".encode()).decode()
    tmp = Path(tempfile.mkdtemp(prefix="vsnap-bench-"))
    ceiling_port = free_port()
    ceiling = ceiling_server(tmp, ceiling_port)
    auth = [f"Authorization: Basic {token}"]
    try:
        # A short run first, not counted: every worker process reads the catalog once and
        # the connections are set up, as on an appliance that has been serving for a while.
        wrk(f"https://127.0.0.1:{ceiling_port}/", [], WARMUP_SECONDS)
        top = wrk(f"https://127.0.0.1:{ceiling_port}/", [])
        wrk(f"https://127.0.0.1:{PORT}/api/volume", auth, WARMUP_SECONDS)
        profiler = profile_workers(a, "load")
        api = wrk(f"https://127.0.0.1:{PORT}/api/volume", auth)
        if profiler is not None:
            profiler.wait()
    finally:
        os.killpg(ceiling.pid, 15)
        ceiling.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return [f"| GET /api/volume (100 volumes), 32 clients, {LOAD_SECONDS} s | ceiling {top['rps']:.0f} req/s "
            f"| {api['rps']:.0f} req/s | {api['rps'] / top['rps']:.2f} | >= 0.5 |",
            f"| ... latency p50 / p99 | {top['p50']:.1f} / {top['p99']:.1f} ms | {api['p50']:.1f} / "
            f"{api['p99']:.1f} ms | | p99 <= 100 ms |",
            f"| ... errors (non-2xx, socket) | {top['errors']}, {top['socket_errors']} | {api['errors']}, "
            f"{api['socket_errors']} | | 0 |"]


def server_memory_mib(a: Appliance) -> tuple[float, float]:
    """Resident memory of the server (its gunicorn master and workers), summed two ways: RSS
    counts pages the processes share (the interpreter, libraries) once per process; PSS
    divides each shared page among the processes that share it, so the sum is what the
    server really holds."""
    rss = pss = 0
    for pid in server_pids(a):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def main() -> None:
    admin = OsAccount("vsnapbench-admin", ["vsnap"])
    a = Appliance(STATE, PORT, log_name="bench-api", env={"VSNAP_AUTH_FAIL_LIMIT": "100000"})
    a.account = admin
    a.http = requests.Session()  # keep-alive, as a backup client's connection pool does
    a.start()
    rows = ["| measure | raw / ceiling | API | ratio | target |", "| --- | --- | --- | --- | --- |"]
    print("\n".join(rows), flush=True)
    pool = None
    try:
        a.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
        disks = [d["uuid"] for d in a.ok("GET", "/api/disk")["disks"]][:2]
        pool = a.ok("POST", "/api/pool", json={"name": POOL, "pool_type": "raid0", "disk_list": disks})
        volumes = [a.ok("POST", "/api/volume", json={"name": f"v{i:03d}", "volume_type": "filesystem",
                                                      "pool_id": pool["id"]}) for i in range(100)]
        measures = [("snapshot", lambda: bench_snapshot_create(a, volumes[0])),
                    ("load", lambda: bench_load(a, admin)),  # before the listing's 10,000 snapshots
                    ("list", lambda: bench_listing(a, [v["name"] for v in volumes]))]
        for name, measure in measures:
            if name in ONLY:
                print("\n".join(measure()), flush=True)  # each as soon as it is known
        rss, pss = server_memory_mib(a)
        print(f"| server resident memory after the above (master + {len(server_pids(a)) - 1} workers), "
              f"RSS summed / PSS summed | | {rss:.0f} / {pss:.0f} MiB | | < 300 MiB |")
    finally:
        if pool is not None:
            a.delete(f"/api/pool/{pool['id']}", timeout=900)
        a.stop()
        admin.remove()


if __name__ == "__main__":
    main()
