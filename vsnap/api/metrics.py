"""GET /api/metrics: Prometheus text. Request counts and latencies are counted in every
server process (prometheus_client's multiprocess mode when gunicorn runs several, see
gunicorn_conf.py); storage figures are read at scrape time."""
from __future__ import annotations

import os

from flask import Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from ..services.metrics import StorageCollector
from .common import Blueprint

blp = Blueprint("metrics", __name__, url_prefix="/api/metrics", description="Prometheus metrics")

REQUESTS = Counter("vsnap_http_requests_total", "API requests", ["method", "endpoint", "status"])
LATENCY = Histogram("vsnap_http_request_duration_seconds", "API request latency", ["method", "endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))


def record_request(method: str, endpoint: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, endpoint, str(status)).inc()
    LATENCY.labels(method, endpoint).observe(seconds)


def _request_registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@blp.route("")
@blp.doc(responses={"200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics():
    """Prometheus metrics: requests by endpoint, pool capacity and health, replication sessions"""
    storage = CollectorRegistry()
    storage.register(StorageCollector(current_app.extensions["vsnap"]))
    body = generate_latest(_request_registry()) + generate_latest(storage)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
