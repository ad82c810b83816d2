"""Storage figures for the Prometheus endpoint, read when scraped: pool capacity and health,
replication sessions by state and the bytes they sent."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func

from ..store.models import ReplicationSession

log = logging.getLogger(__name__)

POOL_STATES = ("ONLINE", "DEGRADED", "FAULTED", "OFFLINE", "UNAVAIL", "REMOVED")


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
        yield from (size, used, free, health, state)

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
