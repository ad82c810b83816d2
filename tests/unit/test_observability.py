"""Log formatting with request ids, the audit trail's redaction and listing, the parsing
behind system stats, and the pool metrics."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from vsnap.drivers.zfs import ZfsDriver
from vsnap.logs import ContextFilter, JsonFormatter, request_id_var
from vsnap.services.audit import AuditService, redact
from vsnap.services.metrics import StorageCollector

from support import empty_tables


def _record(msg="hello", **extra):
    record = logging.LogRecord("vsnap.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_every_record_carries_the_current_request_id():
    token = request_id_var.set("abc123")
    try:
        record = _record()
        assert ContextFilter().filter(record) and record.request_id == "abc123"
    finally:
        request_id_var.reset(token)
    record = _record()
    ContextFilter().filter(record)
    assert record.request_id == "-"


def test_json_lines_carry_structured_fields():
    record = _record("ran zfs list: rc=0", command="zfs", rc=0, duration=0.012, request_id="r1")
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["command"], line["rc"], line["duration"], line["request_id"]) == \
        ("ran zfs list: rc=0", "zfs", 0, 0.012, "r1")
    assert line["level"] == "INFO" and line["time"].endswith("Z")


@pytest.mark.parametrize("body, expected", [
    ({"remote_pass": "hunter2", "remote_user": "u"}, {"remote_pass": "(secret)", "remote_user": "u"}),
    ({"password": "x", "Token": "y", "ssh_public_key": "k", "nested": {"api_secret": "z"}},
     {"password": "(secret)", "Token": "(secret)", "ssh_public_key": "(secret)", "nested": {"api_secret": "(secret)"}}),
    ({"name": "a" * 1000}, {"name": "a" * 256}),
    ([1, "x", None, True], [1, "x", None, True]),
    (None, None),
])
def test_redact(body, expected):
    assert redact(body) == expected


def test_redact_bounds_depth_and_width():
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    assert redact(deep)["a"]["b"]["c"]["d"]["e"] == "..."
    assert len(redact({str(i): i for i in range(100)})) == 50


def test_audit_records_and_lists_newest_first(store):
    empty_tables(store)
    audit = AuditService(store)
    for i in range(3):
        audit.record(time=1000.0 + i, user="admin", address="127.0.0.1", method="POST", path=f"/api/x/{i}",
                     detail={"remote_pass": "s3cret", "n": i}, status=200 if i != 1 else 409,
                     message="conflict" if i == 1 else None, request_id=f"r{i}")
    events, total = audit.list(limit=2)
    assert total == 3 and [e["path"] for e in events] == ["/api/x/2", "/api/x/1"]
    assert events[1]["status"] == 409 and events[1]["message"] == "conflict"
    assert events[0]["detail"] == {"remote_pass": "(secret)", "n": 2} and events[0]["time"] == "1002"
    assert audit.list(user="nobody") == ([], 0)


def test_audit_never_fails_the_request(store, caplog):
    audit = AuditService(store)
    with caplog.at_level(logging.ERROR):
        audit.store = None  # the database is gone
        audit.record(time=1.0, user=None, address=None, method="POST", path="/x", detail=None, status=200,
                     message=None, request_id=None)
    assert "could not record an audit event" in caplog.text


ARCSTATS = """13 1 0x01 123 33456 12345 67890
name                            type data
hits                            4    100
size                            4    2147483648
c_max                           4    8589934592
arc_meta_used                   4    1048576
arc_meta_limit                  4    6442450944
"""


def test_arc_stats_and_ddt_sizes(tmp_path, fake_runner):
    path = tmp_path / "arcstats"
    path.write_text(ARCSTATS)
    zfs = ZfsDriver(fake_runner)
    zfs.ARCSTATS = str(path)
    assert zfs.arc_stats()["c_max"] == 8589934592
    fake_runner.on(["zpool", "status", "-D", "tank"],
                   stdout=" dedup: DDT entries 1000, size 320 on disk, 160 in core\n")
    fake_runner.on(["zpool", "status", "-D", "empty"], stdout=" dedup: no DDT entries\n")
    fake_runner.on(["zpool", "status", "-D", "gone"], returncode=1, stderr="no such pool\n")
    fake_runner.on(["zpool", "status", "-D", "fuse"], stdout="  pool: fuse\n state: ONLINE\n")
    assert zfs.ddt_sizes("tank") == (320000, 160000)
    assert zfs.ddt_sizes("empty") == (0, 0)
    assert zfs.ddt_sizes("gone") is None
    assert zfs.ddt_sizes("fuse") == (0, 0)  # zfs-fuse prints no DDT line without dedup
    zfs.ARCSTATS = str(tmp_path / "missing")
    assert zfs.arc_stats() == {}


class _Pools:
    def __init__(self, pools):
        self.pools = pools

    def list(self):
        return self.pools


def test_pool_metrics_say_state_health_and_scan_progress(store):
    empty_tables(store)
    degraded = {"name": "h21pool", "size_total": "100", "size_used": "10", "size_free": "90", "status": "DEGRADED",
                "health": "75", "scan": {"function": "resilver", "state": "scanning", "percent": 79.0}}
    scrubbed = {"name": "tank", "size_total": "100", "size_used": "10", "size_free": "90", "status": "ONLINE",
                "health": "100", "scan": {"function": "scrub", "state": "finished", "percent": 100.0}}
    idle = {"name": "new", "status": "ONLINE", "health": "100", "scan": None}
    collector = StorageCollector(SimpleNamespace(pools=_Pools([degraded, scrubbed, idle]), store=store))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    assert samples[("vsnap_pool_state", (("pool", "h21pool"), ("state", "DEGRADED")))] == 1.0
    assert samples[("vsnap_pool_health_ratio", (("pool", "h21pool"),))] == 0.75
    assert samples[("vsnap_pool_scan_active", (("function", "resilver"), ("pool", "h21pool")))] == 1.0
    assert samples[("vsnap_pool_scan_active", (("function", "scrub"), ("pool", "h21pool")))] == 0.0
    assert samples[("vsnap_pool_scan_percent", (("function", "resilver"), ("pool", "h21pool")))] == 79.0
    assert samples[("vsnap_pool_scan_active", (("function", "scrub"), ("pool", "tank")))] == 0.0
    assert samples[("vsnap_pool_scan_percent", (("function", "scrub"), ("pool", "tank")))] == 100.0
    assert not any(name == "vsnap_pool_scan_percent" and ("pool", "new") in labels for name, labels in samples)
