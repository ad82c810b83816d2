"""Storage figures for the Prometheus endpoint, read when scraped: pool capacity, health, state
and scrub or resilver progress, replication sessions by state and the bytes they sent."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func

from ..store.models import ReplicationSession

log = logging.getLogger(__name__)

POOL_STATES = ("ONLINE", "DEGRADED", "FAULTED", "OFFLINE", "UNAVAIL", "REMOVED")
SCAN_FUNCTIONS = ("scrub", "resilver")


class StorageCollector:
    def __init__(self, services):
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("vsnap_pool_size_bytes", "Pool capacity", labels=["pool"])
        used = GaugeMetricFamily("vsnap_pool_used_bytes", "Pool space used", labels=["pool"])
        free = GaugeMetricFamily("vsnap_pool_free_bytes", "Pool space free", labels=["pool"])
        health = GaugeMetricFamily("vsnap_pool_health_ratio", "Share of the pool's devices that are healthy",
                                   labels=["pool"])
        state = GaugeMetricFamily("vsnap_pool_state", "1 for the pool's current state", labels=["pool", "state"])
        scanning = GaugeMetricFamily("vsnap_pool_scan_active", "1 while a scrub or resilver runs on the pool",
                                     labels=["pool", "function"])
        scan_percent = GaugeMetricFamily("vsnap_pool_scan_percent",
                                         "How far the pool's running or last scrub or resilver got (0-100)",
                                         labels=["pool", "function"])
        try:
            pools = self.services.pools.list()
        except Exception as exc:  # a scrape must still answer: the figures are just missing
            log.warning("metrics: pools unavailable: %s", exc)
            pools = []
        for p in pools:
            name = p["name"]
            for family, key in ((size, "size_total"), (used, "size_used"), (free, "size_free")):
                if p.get(key) is not None:
                    family.add_metric([name], float(p[key]))
            if p.get("health") is not None:
                health.add_metric([name], float(p["health"]) / 100)
            for s in POOL_STATES:
                state.add_metric([name, s], 1.0 if p.get("status") == s else 0.0)
            scan = p.get("scan") or {}
            for function in SCAN_FUNCTIONS:
                running = scan.get("function") == function and scan.get("state") == "scanning"
                scanning.add_metric([name, function], 1.0 if running else 0.0)
                if scan.get("function") == function and scan.get("percent") is not None:
                    scan_percent.add_metric([name, function], float(scan["percent"]))
        yield from (size, used, free, health, state, scanning, scan_percent)

        sessions = GaugeMetricFamily("vsnap_replication_sessions", "Replication sessions by status",
                                     labels=["status"])
        sent = GaugeMetricFamily("vsnap_replication_sent_bytes", "Bytes sent by replication sessions, by status",
                                 labels=["status"])
        counts = {s: (0, 0) for s in ("PENDING", "ACTIVE", "COMPLETED", "FAILED")}
        with self.services.store.session() as s:
            for status, count, total in s.query(ReplicationSession.status, func.count(),
                                                func.coalesce(func.sum(ReplicationSession.size_sent), 0)) \
                    .group_by(ReplicationSession.status):
                counts[status] = (count, total)
        for status, (count, total) in counts.items():
            sessions.add_metric([status], float(count))
            sent.add_metric([status], float(total))
        yield sessions
        yield sent
