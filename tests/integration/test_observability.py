"""Logs with request ids, the audit trail, Prometheus metrics and system stats, checked after
a known sequence of calls on the live appliance."""
from __future__ import annotations

import re
import time
import uuid

from .zfs_tools import PREFIX, unused


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample of the Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_every_line_of_a_request_carries_its_id_and_commands_are_logged(appliance):
    rid = f"obs-{uuid.uuid4().hex[:8]}"
    r = appliance.get("/api/pool", headers={"X-Request-Id": rid})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == rid
    time.sleep(0.5)
    lines = [line for line in appliance.log_path.read_text(errors="replace").splitlines() if f"[{rid}]" in line]
    assert any(re.search(r"ran zpool .*: rc=0 in \d+\.\d{3}s", line) for line in lines), lines
    assert any("GET /api/pool -> 200" in line for line in lines), lines
    # An id that is not a plain token is replaced, not written into the log.
    r = appliance.get("/api/pool", headers={"X-Request-Id": "bad id;rm -rf /"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-Id"])


def test_audit_trail_records_changes_with_who_what_and_result(appliance, admin):
    name = f"audit-{uuid.uuid4().hex[:6]}"
    made = appliance.post("/api/host", json={"name": name, "iqns": []})
    assert made.status_code == 200
    host_id = made.json()["id"]
    bad = appliance.post("/api/host", json={"name": name, "iqns": ["not-an-iqn"]})
    assert bad.status_code == 400
    appliance.ok("PUT", f"/api/host/{host_id}", json={"name": name + "-x"})
    appliance.ok("DELETE", f"/api/host/{host_id}")
    refused = appliance.post("/api/host", json={"name": "x"}, auth=(admin.name, "wrong-password"))
    assert refused.status_code == 401
    secret = f"pw-{uuid.uuid4().hex}"
    appliance.post("/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": "nobody",
                                         "remote_pass": secret, "remote_api_port": 1})
    appliance.get("/api/host")  # reads are not changes

    body = appliance.ok("GET", "/api/audit", params={"limit": 6})
    events = body["events"]
    assert body["total"] >= 6 and len(events) == 6
    partner, refused_ev, deleted, updated, failed, created = events
    assert (created["method"], created["path"], created["status"], created["user"]) == \
        ("POST", "/api/host", 200, admin.name)
    assert created["detail"] == {"name": name, "iqns": []} and created["request_id"] == made.headers["X-Request-Id"]
    assert failed["status"] == 400 and "not-an-iqn" in failed["message"]
    assert (updated["method"], updated["path"]) == ("PUT", f"/api/host/{host_id}")
    assert (deleted["method"], deleted["status"]) == ("DELETE", 200)
    assert refused_ev["status"] == 401 and refused_ev["user"] == admin.name  # the name it claimed
    assert partner["path"] == "/api/partner" and partner["detail"]["remote_pass"] == "(secret)"
    assert secret not in str(appliance.ok("GET", "/api/audit", params={"limit": 50}))
    assert int(created["time"]) <= int(deleted["time"]) <= int(time.time())
    assert all(e["method"] != "GET" for e in events)
    assert appliance.get("/api/audit", params={"limit": 0}).status_code == 400


def test_metrics_count_requests_and_show_pools_and_sessions(appliance, pools):
    pool = pools(f"{PREFIX}metrics", "raid0", unused(appliance, 1))
    before = appliance.get("/api/metrics").text
    count_before = metric(before, "vsnap_http_requests_total", method="GET", endpoint="/api/host",
                          status="200") or 0
    for _ in range(3):
        appliance.ok("GET", "/api/host")
    r = appliance.get("/api/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert metric(text, "vsnap_http_requests_total", method="GET", endpoint="/api/host", status="200") == \
        count_before + 3  # summed over the server's worker processes
    assert metric(text, "vsnap_http_request_duration_seconds_count", method="GET", endpoint="/api/host") >= 3
    assert metric(text, "vsnap_pool_size_bytes", pool=pool["name"]) == float(pool["size_total"])
    assert metric(text, "vsnap_pool_free_bytes", pool=pool["name"]) > 0
    assert metric(text, "vsnap_pool_health_ratio", pool=pool["name"]) == 1.0
    assert metric(text, "vsnap_pool_state", pool=pool["name"], state="ONLINE") == 1.0
    for status in ("PENDING", "ACTIVE", "COMPLETED", "FAILED"):
        assert metric(text, "vsnap_replication_sessions", status=status) is not None
        assert metric(text, "vsnap_replication_sent_bytes", status=status) is not None
    assert appliance.get("/api/metrics", auth=None).status_code == 401


def test_system_stats(appliance, pools):
    pools(f"{PREFIX}stats", "raid0", unused(appliance, 1))
    stats = appliance.ok("GET", "/api/system/stats")
    assert set(stats) == {"size_arc_max", "size_arc_used", "size_ddt_core", "size_ddt_disk",
                          "size_zfs_arc_meta_max", "size_zfs_arc_meta_used"}
    for value in stats.values():
        assert value is None or (isinstance(value, str) and value.isdigit())
    assert stats["size_ddt_disk"] is not None  # zpool status -D reports the dedup table
