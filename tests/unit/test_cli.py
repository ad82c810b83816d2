"""The vsnap command against a fake transport: the exact requests each verb sends, what it
prints, exit codes, where credentials come from, TLS pinning, and progress while waiting."""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass

import pytest

from vsnap import cli
from vsnap.cli import build_parser, main, settings
from vsnap.cli.client import ConnectionFailure, Reply, RequestsTransport, tls_settings
from vsnap.cli.commands import size_arg
from vsnap.cli.output import Progress, human_size, human_time

BASE = "https://127.0.0.1:8900"
P_ID = "5058a20323b943ed925fd92f88f1b926"
R_ID = "ad05bf4db630bfc7ecb706563788f087"


@dataclass
class Call:
    method: str
    url: str
    params: dict | None
    body: object
    auth: tuple | None

    @property
    def path(self) -> str:
        return self.url[len(BASE):] if self.url.startswith(BASE) else self.url


class FakeTransport:
    """Answers each request with the next canned reply and records what was sent."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls: list[Call] = []

    def send(self, method, url, *, params=None, json=None, auth=None, timeout=None):
        self.calls.append(Call(method, url, params, json, auth))
        if not self.replies:
            raise AssertionError(f"unexpected request {method} {url}")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def ok(body) -> Reply:
    return Reply(200, json.dumps(body), {"Content-Type": "application/json"})


def fail(status, message, kind) -> Reply:
    return Reply(status, json.dumps({"error": {"message": message, "type": kind}}))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("VSNAP_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", str(tmp_path / "no-such-cli.conf"))
    monkeypatch.setenv("VSNAP_STATE", str(tmp_path / "state"))  # no default CA file
    monkeypatch.setenv("VSNAP_USER", "admin")
    monkeypatch.setenv("VSNAP_PASSWORD", "s3cret")


def run(argv, *replies, clock=None):
    transport = FakeTransport(*replies)
    code = main(argv, transport=transport, clock=clock or FakeClock())
    return code, transport


# -- every verb: the exact request ----------------------------------------------------------
POOL = {"id": "2", "name": "backup1", "pool_type": "raid6", "size_total": "1610612736",
        "size_free": "1073741824", "size_used": "536870912", "status": "ONLINE", "health": "100",
        "time_created": "1497365131", "time_updated": "1497365131"}
DISKS = {"disks": [{"name": "/dev/loop3", "uuid": "u3", "size": "1073741824", "used_as": "unused"},
                   {"name": "/dev/loop4", "uuid": "u4", "size": "1073741824", "used_as": "unused"}], "total": 2}
SESSION = {"id": "2", "rel_id": R_ID, "status": "PENDING", "size_sent": None, "message": None}
SHARE = {"id": "1", "name": "/vsnap/p/fs", "vol_id": "7", "share_type": "nfs",
         "share_options": {"read_only": False, "allowed_hosts": ["10.0.0.1"]}}

# (argv, [(method, path, params, body), ...], replies)
CASES = [
    (["system", "show"], [("GET", "/api/system", None, None)], [ok({"init_status": "Ready"})]),
    # without --multipool / --no-multipool the setting is not sent: init leaves it as it is
    (["system", "init"], [("POST", "/api/system", None, {"action": "init", "async": False,
                                                          "skip_pool": False})], [ok({"init_status": "Ready"})]),
    (["system", "init", "--no-multipool"],
     [("POST", "/api/system", None, {"action": "init", "async": False, "multipool": False, "skip_pool": False})],
     [ok({"init_status": "Ready"})]),
    (["system", "init", "--multipool", "--skip-pool", "--async"],
     [("POST", "/api/system", None, {"action": "init", "async": True, "multipool": True, "skip_pool": True})],
     [ok({"init_status": "Initializing"})]),
    (["system", "stats"], [("GET", "/api/system/stats", None, None)], [ok({"size_arc_max": "1024"})]),
    (["disk", "show"], [("GET", "/api/disk", None, None)], [ok(DISKS)]),
    (["disk", "show", "--used-as", "unused"], [("GET", "/api/disk", {"used_as": "unused"}, None)], [ok(DISKS)]),
    (["disk", "rescan"], [("POST", "/api/disk", None, {"action": "rescan"})], [ok({})]),
    (["pool", "create", "backup1", "--type", "raid6", "--disk", "a", "--disk", "b,c", "--no-compression",
      "--dedup", "--diskgroup-size", "4"],
     [("POST", "/api/pool", None, {"name": "backup1", "pool_type": "raid6", "disk_list": ["a", "b", "c"],
                                   "compression": False, "deduplication": True, "diskgroup_size": 4})], [ok(POOL)]),
    (["pool", "create", "p0", "--type", "raid0"],
     [("POST", "/api/pool", None, {"name": "p0", "pool_type": "raid0"})], [ok(POOL)]),
    (["pool", "create", "p0", "--type", "raid0", "--disk", "/dev/loop4,u3", "--syncwrite"],
     [("GET", "/api/disk", None, None),
      ("POST", "/api/pool", None, {"name": "p0", "pool_type": "raid0", "disk_list": ["u4", "u3"], "syncwrite": True})],
     [ok(DISKS), ok(POOL)]),
    (["pool", "show"], [("GET", "/api/pool", None, None)], [ok({"pools": [POOL], "total": 1})]),
    (["pool", "show", "2"], [("GET", "/api/pool/2", None, None)], [ok(POOL)]),
    (["pool", "show", "--id", "2"], [("GET", "/api/pool/2", None, None)], [ok(POOL)]),
    (["pool", "show", "--name", "backup1"], [("GET", "/api/pool", {"name": "backup1"}, None)], [ok(POOL)]),
    (["pool", "update", "2", "--new-name", "backup2", "--no-syncwrite"],
     [("PUT", "/api/pool/2", None, {"name": "backup2", "syncwrite": False})], [ok(POOL)]),
    (["pool", "update", "--name", "backup1", "--compression", "--no-dedup"],
     [("GET", "/api/pool", {"name": "backup1"}, None),
      ("PUT", "/api/pool/2", None, {"compression": True, "deduplication": False})], [ok(POOL), ok(POOL)]),
    (["pool", "expand", "2"], [("POST", "/api/pool/2", None, {"action": "expand"})], [ok(POOL)]),
    (["pool", "expand", "2", "--disk", "u3"],
     [("POST", "/api/pool/2", None, {"action": "expand", "disk_list": ["u3"]})], [ok(POOL)]),
    (["pool", "addlog", "2", "--disk", "u3,u4"],
     [("POST", "/api/pool/2", None, {"action": "addlog", "disk_list": ["u3", "u4"]})], [ok(POOL)]),
    (["pool", "removelog", "2"], [("POST", "/api/pool/2", None, {"action": "removelog"})], [ok(POOL)]),
    (["pool", "addcache", "2", "--disk", "u3"],
     [("POST", "/api/pool/2", None, {"action": "addcache", "disk": "u3"})], [ok(POOL)]),
    (["pool", "removecache", "--id", "2"], [("POST", "/api/pool/2", None, {"action": "removecache"})], [ok(POOL)]),
    (["pool", "addspare", "2", "--disk", "u3"],
     [("POST", "/api/pool/2", None, {"action": "addspare", "disk_list": ["u3"]})], [ok(POOL)]),
    (["pool", "removespare", "2", "--disk", "u3"],
     [("POST", "/api/pool/2", None, {"action": "removespare", "disk_list": ["u3"]})], [ok(POOL)]),
    (["pool", "scrub", "2"], [("POST", "/api/pool/2", None, {"action": "scrub"})], [ok(POOL)]),
    (["pool", "scrub_stop", "--name", "backup1"],
     [("GET", "/api/pool", {"name": "backup1"}, None), ("POST", "/api/pool/2", None, {"action": "scrub_stop"})],
     [ok(POOL), ok(POOL)]),
    (["pool", "replace", "2", "--disk", "/dev/disk/by-id/virtio-vsnapdisk1", "--new-disk", "/dev/loop4"],
     [("GET", "/api/disk", None, None),
      ("POST", "/api/pool/2", None, {"action": "replace", "disk": "/dev/disk/by-id/virtio-vsnapdisk1",
                                     "disk_list": ["u4"]})], [ok(DISKS), ok(POOL)]),
    (["pool", "delete", "2"], [("DELETE", "/api/pool/2", None, None)], [ok({})]),
    (["pool", "delete", "--name", "backup1"],
     [("GET", "/api/pool", {"name": "backup1"}, None), ("DELETE", "/api/pool/2", None, None)], [ok(POOL), ok({})]),
    (["volume", "create", "fs1", "--pool", "1", "--size", "100G"],
     [("POST", "/api/volume", None, {"name": "fs1", "volume_type": "filesystem", "pool_id": "1",
                                     "size_total": "107374182400"})], [ok({"id": "3"})]),
    (["volume", "create", "lun1", "--type", "lun", "--pool", "1", "--size", "1.5G", "--block-size", "4K"],
     [("POST", "/api/volume", None, {"name": "lun1", "volume_type": "lun", "pool_id": "1",
                                     "size_total": "1610612736", "size_block": "4096"})], [ok({"id": "4"})]),
    (["volume", "create", "flun", "--type", "filebackedlun", "--parent", "3", "--path", "vm1/disk0.img"],
     [("POST", "/api/volume", None, {"name": "flun", "volume_type": "filebackedlun", "parent_id": "3",
                                     "parent_path": "vm1/disk0.img"})], [ok({"id": "5"})]),
    (["volume", "create", "restore_1", "--snapshot", "9"],
     [("POST", "/api/volume", None, {"name": "restore_1", "snapshot_id": "9"})], [ok({"id": "6"})]),
    (["volume", "show"], [("GET", "/api/volume", None, None)], [ok({"volumes": [], "total": 0})]),
    (["volume", "show", "--pool", "1", "--type", "lun"],
     [("GET", "/api/volume", {"pool_id": "1", "volume_type": "lun"}, None)], [ok({"volumes": [], "total": 0})]),
    (["volume", "show", "3"], [("GET", "/api/volume/3", None, None)], [ok({"id": "3"})]),
    (["volume", "show", "--name", "fs1"], [("GET", "/api/volume", {"name": "fs1"}, None)], [ok({"id": "3"})]),
    (["volume", "update", "3", "--new-name", "fs2", "--size", "2G"],
     [("PUT", "/api/volume/3", None, {"name": "fs2", "size_total": "2147483648"})], [ok({"id": "3"})]),
    (["volume", "update", "3", "--no-limit"], [("PUT", "/api/volume/3", None, {"size_total": None})],
     [ok({"id": "3"})]),
    (["volume", "delete", "3"], [("DELETE", "/api/volume/3", None, None)], [ok({})]),
    (["volume", "map", "4", "--host", "1"], [("POST", "/api/volume/4/map", None, {"host_id": "1"})],
     [ok({"vol_id": "4", "lun": "1"})]),
    (["snapshot", "create", "--volume", "1"], [("POST", "/api/volume/1/snapshot", None, {})], [ok({"id": "8"})]),
    (["snapshot", "create", "nightly", "--volume", "1"],
     [("POST", "/api/volume/1/snapshot", None, {"name": "nightly"})], [ok({"id": "8"})]),
    (["snapshot", "show"], [("GET", "/api/snapshot", None, None)], [ok({"snapshots": [], "total": 0})]),
    (["snapshot", "show", "--volume", "1"], [("GET", "/api/snapshot", {"parent_id": "1"}, None)],
     [ok({"snapshots": [], "total": 0})]),
    (["snapshot", "show", "8"], [("GET", "/api/snapshot/8", None, None)], [ok({"id": "8"})]),
    (["snapshot", "delete", "--name", "nightly"],
     [("GET", "/api/snapshot", {"name": "nightly"}, None), ("DELETE", "/api/snapshot/8", None, None)],
     [ok({"id": "8"}), ok({})]),
    (["share", "create", "--volume", "1", "--type", "nfs", "--allow", "10.0.0.0/24", "--allow", "b.example",
      "--read-only"],
     [("POST", "/api/volume/1/share", None, {"share_type": "nfs", "share_options": {
         "read_only": True, "allowed_hosts": ["10.0.0.0/24", "b.example"]}})], [ok(SHARE)]),
    (["share", "create", "--volume", "2", "--type", "smb"],
     [("POST", "/api/volume/2/share", None, {"share_type": "smb"})], [ok(SHARE)]),
    (["share", "show"], [("GET", "/api/share", None, None)], [ok({"shares": [], "total": 0})]),
    (["share", "show", "1"], [("GET", "/api/share/1", None, None)], [ok(SHARE)]),
    (["share", "update", "1", "--allow", "10.0.0.8"],
     [("GET", "/api/share/1", None, None),
      ("PUT", "/api/volume/7/share", None, {"share_type": "nfs", "share_options": {
          "read_only": False, "allowed_hosts": ["10.0.0.8"]}})], [ok(SHARE), ok(SHARE)]),
    (["share", "update", "--volume", "7", "--read-only"],
     [("GET", "/api/volume/7", None, None), ("GET", "/api/share/1", None, None),
      ("PUT", "/api/volume/7/share", None, {"share_type": "nfs", "share_options": {
          "read_only": True, "allowed_hosts": ["10.0.0.1"]}})],
     [ok({"id": "7", "share_id": "1"}), ok(SHARE), ok(SHARE)]),
    (["share", "update", "1", "--type", "smb"],
     [("GET", "/api/share/1", None, None), ("PUT", "/api/volume/7/share", None, {"share_type": "smb"})],
     [ok(SHARE), ok(SHARE)]),
    (["share", "delete", "1"], [("DELETE", "/api/share/1", None, None)], [ok({})]),
    (["share", "delete", "--volume", "7"], [("DELETE", "/api/volume/7/share", None, None)], [ok({})]),
    (["host", "create", "esx-07", "--iqn", "iqn.1998-01.com.vmware:a", "--iqn", "iqn.1998-01.com.vmware:b"],
     [("POST", "/api/host", None, {"name": "esx-07", "iqns": ["iqn.1998-01.com.vmware:a",
                                                              "iqn.1998-01.com.vmware:b"]})], [ok({"id": "1"})]),
    (["host", "create", "bare"], [("POST", "/api/host", None, {"name": "bare"})], [ok({"id": "2"})]),
    (["host", "show"], [("GET", "/api/host", None, None)], [ok({"hosts": [], "total": 0})]),
    (["host", "show", "--name", "esx-07"], [("GET", "/api/host", {"name": "esx-07"}, None)], [ok({"id": "1"})]),
    (["host", "update", "1", "--new-name", "esx-08", "--no-iqns"],
     [("PUT", "/api/host/1", None, {"name": "esx-08", "iqns": []})], [ok({"id": "1"})]),
    (["host", "update", "1", "--iqn", "iqn.1998-01.com.vmware:c"],
     [("PUT", "/api/host/1", None, {"iqns": ["iqn.1998-01.com.vmware:c"]})], [ok({"id": "1"})]),
    (["host", "map", "1", "--volume", "5"], [("POST", "/api/host/1", None, {"action": "map", "vol_id": "5"})],
     [ok({"vol_id": "5", "lun": "1"})]),
    (["host", "unmap", "--name", "esx-07", "--volume", "5"],
     [("GET", "/api/host", {"name": "esx-07"}, None),
      ("POST", "/api/host/1", None, {"action": "unmap", "vol_id": "5"})], [ok({"id": "1"}), ok({})]),
    (["host", "delete", "1"], [("DELETE", "/api/host/1", None, None)], [ok({})]),
    (["partner", "create", "10.1.0.5", "--remote-user", "vsnapadmin", "--remote-password", "pw",
      "--remote-api-port", "8900", "--local-addr", "10.0.0.2"],
     [("POST", "/api/partner", None, {"remote_addr": "10.1.0.5", "remote_user": "vsnapadmin", "remote_pass": "pw",
                                      "local_addr": "10.0.0.2", "remote_api_port": 8900})], [ok({"id": P_ID})]),
    (["partner", "show"], [("GET", "/api/partner", None, None)], [ok({"partners": [], "total": 0})]),
    (["partner", "show", P_ID], [("GET", f"/api/partner/{P_ID}", None, None)], [ok({"id": P_ID})]),
    (["partner", "delete", P_ID], [("DELETE", f"/api/partner/{P_ID}", None, None)], [ok({})]),
    (["relationship", "create", "--volume", "1", "--partner", P_ID, "--remote-pool", "2", "--remote-name", "r1",
      "--reuse"],
     [("POST", "/api/volume/1/relationship", None, {"partner_id": P_ID, "remote_pool_id": "2",
                                                    "remote_vol_name": "r1", "reuse": True})], [ok({"id": R_ID})]),
    (["relationship", "create", "--volume", "1", "--partner", P_ID],
     [("POST", "/api/volume/1/relationship", None, {"partner_id": P_ID})], [ok({"id": R_ID})]),
    (["relationship", "create", "--volume", "1", "--partner", P_ID, "--max-rate", "10M"],
     [("POST", "/api/volume/1/relationship", None, {"partner_id": P_ID, "max_rate": "10485760"})],
     [ok({"id": R_ID})]),
    (["relationship", "update", R_ID, "--max-rate", "512K"],
     [("PUT", f"/api/relationship/{R_ID}", None, {"max_rate": "524288"})], [ok({"id": R_ID})]),
    (["relationship", "update", R_ID, "--max-rate", "none"],
     [("PUT", f"/api/relationship/{R_ID}", None, {"max_rate": None})], [ok({"id": R_ID})]),
    (["relationship", "show"], [("GET", "/api/relationship", None, None)], [ok({"relationships": [], "total": 0})]),
    (["relationship", "show", R_ID], [("GET", f"/api/relationship/{R_ID}", None, None)], [ok({"id": R_ID})]),
    (["relationship", "show", "--volume", "1"], [("GET", "/api/volume/1/relationship", None, None)],
     [ok({"relationships": [], "total": 0})]),
    (["relationship", "show", "--volume-name", "vm_backups"],
     [("GET", "/api/relationship", {"vol_name": "vm_backups"}, None)], [ok({"relationships": [], "total": 0})]),
    (["relationship", "delete", R_ID], [("DELETE", f"/api/relationship/{R_ID}", None, None)], [ok({})]),
    (["relationship", "delete", R_ID, "--preserve-replica"],
     [("DELETE", f"/api/relationship/{R_ID}", {"preserve_replica": "true"}, None)], [ok({})]),
    (["session", "start", R_ID], [("POST", f"/api/relationship/{R_ID}/session", None, {})], [ok(SESSION)]),
    (["session", "start", R_ID, "--snapshot", "36", "--remote-snap-name", "nightly"],
     [("POST", f"/api/relationship/{R_ID}/session", None, {"snap_id": "36", "remote_snap_name": "nightly"})],
     [ok(SESSION)]),
    (["session", "start", R_ID, "--rollback-replica"],
     [("POST", f"/api/relationship/{R_ID}/session", None, {"rollback_replica": True})], [ok(SESSION)]),
    (["session", "show"], [("GET", "/api/session", None, None)], [ok({"sessions": [SESSION], "total": 1})]),
    (["session", "show", "2"], [("GET", "/api/session/2", None, None)], [ok(SESSION)]),
    (["session", "show", "--relationship", R_ID], [("GET", "/api/session", {"rel_id": R_ID}, None)],
     [ok({"sessions": [], "total": 0})]),
    (["session", "cancel", "2"], [("POST", "/api/session/2", None, {"action": "cancel"})],
     [ok(dict(SESSION, status="FAILED", message="Canceled"))]),
    (["user", "show"], [("GET", "/api/user", None, None)], [ok({"users": [], "total": 0})]),
    (["network", "show"], [("GET", "/api/network", None, None)], [ok({"networks": [], "total": 0})]),
    (["network", "show", "lo"], [("GET", "/api/network/lo", None, None)], [ok({"id": "lo"})]),
    (["network", "update", "lo", "--services", "mgmt,nfs", "--services", "repl"],
     [("PUT", "/api/network/lo", None, {"services": ["mgmt", "nfs", "repl"]})], [ok({"id": "lo"})]),
    (["target", "show"], [("GET", "/api/target", None, None)], [ok({"targets": [], "total": 0})]),
    (["audit", "show"], [("GET", "/api/audit", None, None)], [ok({"events": [], "total": 0})]),
    (["audit", "show", "--limit", "5", "--by-user", "admin"],
     [("GET", "/api/audit", {"limit": 5, "user": "admin"}, None)],
     [ok({"events": [], "total": 0})]),
]


@pytest.mark.parametrize("argv,expected,replies", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_each_verb_sends_the_exact_request(argv, expected, replies, capsys):
    code, transport = run(argv, *replies)
    assert code == 0, capsys.readouterr().err
    sent = [(c.method, c.path, c.params, c.body) for c in transport.calls]
    assert sent == expected
    assert all(c.url.startswith(BASE + "/api/") and c.auth == ("admin", "s3cret") for c in transport.calls)
    assert capsys.readouterr().out.strip()  # something for people, always


def test_every_request_fits_the_api_schemas():
    """The bodies and query strings above load cleanly through the API's own schemas (strict:
    an unknown or mistyped field would fail), at routes the API has for those methods."""
    from flask import Flask
    from werkzeug.exceptions import HTTPException

    from vsnap.api import init_api

    app = Flask("cli-contract")
    init_api(app)
    adapter = app.url_map.bind("localhost")
    for argv, expected, _ in CASES:
        for method, path, params, body in expected:
            try:
                endpoint, _ = adapter.match(path, method=method)
            except HTTPException:
                raise AssertionError(f"{' '.join(argv)}: the API has no {method} {path}")
            parameters = app.view_functions[endpoint]._apidoc.get("arguments", {}).get("parameters", [])
            schemas = {p["in"]: p["schema"] for p in parameters}
            for location, data in (("json", body), ("query", params)):
                if data is None:
                    continue
                schema = schemas.get(location)
                assert schema is not None, f"{' '.join(argv)}: {method} {path} takes no {location}"
                schema = schema() if isinstance(schema, type) else schema
                if location == "query":
                    data = {k: str(v) for k, v in data.items()}
                schema.load(data)


def test_every_resource_and_verb_of_the_issue_exists():
    tree = {name: sorted(sub) for name, sub in subcommands(build_parser()).items()}
    wanted = {
        "system": "show init stats", "disk": "show rescan",
        "pool": "create show update expand addlog removelog addcache removecache addspare removespare delete",
        "volume": "create show update delete map", "snapshot": "create show delete",
        "share": "create show update delete", "host": "create show update map unmap delete",
        "partner": "create show delete", "relationship": "create show update delete",
        "session": "start show cancel", "user": "show", "network": "show update", "target": "show",
        "audit": "show"}
    for resource, verbs in wanted.items():
        assert set(verbs.split()) <= set(tree[resource]), resource
    verbs_tested = {tuple(argv[:2]) for argv, _, _ in CASES}
    for resource, verbs in tree.items():
        for verb in verbs:
            # (`key` verbs call no API: run locally as root, tested in test_cli_keys.py)
            assert (resource, verb) in verbs_tested or (resource, verb) == ("session", "wait") or resource == "key"


# -- output ---------------------------------------------------------------------------------
def test_json_prints_the_api_answer_exactly(capsys):
    text = '{"total": 1, "volumes": [{"id": "2", "name": "fs1", "size_total": "1610612736"}]}'
    for argv in (["--json", "volume", "show"], ["volume", "show", "--json"]):
        code, _ = run(argv, Reply(200, text))
        assert code == 0
        assert capsys.readouterr().out == text + "\n"
    stats = {"size_arc_max": "1073741824", "size_arc_used": "1234", "size_ddt_core": None,
             "size_ddt_disk": None, "size_zfs_arc_meta_max": "5000", "size_zfs_arc_meta_used": "100"}
    code, _ = run(["--json", "system", "stats"], ok(stats))
    assert code == 0 and json.loads(capsys.readouterr().out) == stats
    code, _ = run(["--json", "pool", "delete", "2"], Reply(200, "{}\n"))
    assert capsys.readouterr().out == "{}\n"


def test_json_pool_show_gives_every_pool_in_full_as_monitoring_reads_it(capsys):
    """IBM's sppmon runs `vsnap --json pool show` and reads each pool's details, encryption
    among them."""
    full = {**POOL, "compression": True, "compression_ratio": "1.50x", "deduplication": False,
            "deduplication_ratio": "1.00x", "diskgroup_size": "8", "size_before_compression": "805306368",
            "size_before_deduplication": "536870912"}
    other = {**POOL, "id": "5", "name": "gone"}
    code, transport = run(["--json", "pool", "show"], ok({"pools": [POOL, other], "total": 2}), ok(full),
                          fail(404, "Pool 5 not found", "NotFoundError"))  # deleted meanwhile
    assert code == 0
    assert [(c.method, c.path) for c in transport.calls] == [("GET", "/api/pool"), ("GET", "/api/pool/2"),
                                                             ("GET", "/api/pool/5")]
    assert json.loads(capsys.readouterr().out) == {"pools": [{**full, "encryption": {"enabled": False}}],
                                                   "total": 1}
    code, _ = run(["--json", "pool", "show", "2"], ok(full))
    assert json.loads(capsys.readouterr().out) == {**full, "encryption": {"enabled": False}}
    code, _ = run(["--json", "pool", "show"], ok({"pools": [], "total": 0}))
    assert json.loads(capsys.readouterr().out) == {"pools": [], "total": 0}


def test_stats_for_people_are_human_sizes(capsys):
    run(["system", "stats"], ok({"size_arc_max": "1610612736", "size_ddt_core": None}))
    out = capsys.readouterr().out
    assert "size_arc_max:  1.5G (1610612736 bytes)" in out and "size_ddt_core: -" in out


TABLES = [
    (["pool", "show"], {"pools": [POOL], "total": 1}, "ID NAME TYPE STATUS HEALTH SIZE USED FREE SCAN"),
    (["disk", "show"], DISKS, "NAME UUID SIZE USED_AS POOL TYPE VENDOR MODEL"),
    (["volume", "show"], {"volumes": [{"id": "3", "name": "fs1", "size_total": None}], "total": 1},
     "ID NAME TYPE POOL_ID CLONE SIZE USED FREE CREATED"),
    (["snapshot", "show"], {"snapshots": [], "total": 0}, "ID NAME VOLUME_ID CREATED"),
    (["share", "show"], {"shares": [], "total": 0}, "ID NAME TYPE VOLUME_ID CREATED"),
    (["host", "show"], {"hosts": [{"id": "1", "name": "h", "iqns": ["a", "b"]}], "total": 1}, "ID NAME IQNS CREATED"),
    (["partner", "show"], {"partners": [], "total": 0}, "ID ADDRESS API_PORT SSH_PORT CREATED"),
    (["relationship", "show"], {"relationships": [], "total": 0},
     "ID ROLE VOLUME PARTNER_ID REMOTE_VOLUME LAST_SYNC LAST_SUCCESS_SNAP"),
    (["session", "show"], {"sessions": [SESSION], "total": 1}, "ID REL_ID STATUS SENT SNAPSHOT QUEUED ENDED MESSAGE"),
    (["user", "show"], {"users": [{"name": "vsnapadmin", "uid": "1000", "gid": "1000", "role": "vsnap_admin"}],
                        "total": 1}, "NAME UID GID ROLE"),
    (["network", "show"], {"networks": [], "total": 0}, "ID NAME HW_ADDR IPV4 IPV6 SERVICES"),
    (["target", "show"], {"targets": [], "total": 0}, "TYPE WWN HOST_ID"),
    (["audit", "show"], {"events": [{"id": "1", "time": "1497365131", "user": "admin", "address": "127.0.0.1",
                                     "method": "POST", "path": "/api/pool", "status": 200, "message": None,
                                     "request_id": "abc"}], "total": 1},
     "ID TIME USER ADDRESS METHOD PATH STATUS MESSAGE REQUEST_ID"),
]


@pytest.mark.parametrize("argv,body,headers", TABLES, ids=[t[0][0] for t in TABLES])
def test_tables_have_upper_case_headers_and_one_row_per_object(argv, body, headers, capsys):
    assert run(argv, ok(body))[0] == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == headers.split()
    rows = next(v for v in body.values() if isinstance(v, list))
    assert len(lines) == 1 + len(rows)


def test_pool_table_values(capsys):
    run(["pool", "show"], ok({"pools": [POOL], "total": 1}))
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row == ["2", "backup1", "raid6", "ONLINE", "100%", "1.5G", "512M", "1G", "-"]
    resilvering = dict(POOL, status="DEGRADED", health="75",
                       scan={"function": "resilver", "state": "scanning", "percent": 79.0})
    scrubbed = dict(POOL, id="3", scan={"function": "scrub", "state": "finished", "percent": 100.0})
    run(["pool", "show"], ok({"pools": [resilvering, scrubbed], "total": 2}))
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0][3:5] == ["DEGRADED", "75%"] and rows[0][-2:] == ["resilver", "79.00%"]
    assert rows[1][-2:] == ["scrub", "finished"]


def test_pool_show_says_its_scan_and_its_failed_and_spare_devices(capsys):
    body = dict(POOL, status="DEGRADED", health="75", disks={"raid5_group1": ["/dev/a", "/dev/c", "/dev/d"],
                                                             "spare": ["/dev/c"]},
                scan={"function": "resilver", "state": "scanning", "percent": 79.0,
                      "estimated_end": "1796536100", "errors": None, "time_started": None, "time_ended": None},
                disk_states=[
                    {"path": "/dev/a", "group": "raid5_group1", "role": "data", "state": "FAULTED", "replacing": "old"},
                    {"path": "/dev/c", "group": "raid5_group1", "role": "data", "state": "ONLINE",
                     "replacing": "spare"},
                    {"path": "/dev/d", "group": "raid5_group1", "role": "data", "state": "ONLINE", "replacing": None},
                    {"path": "/dev/c", "group": "spare", "role": "spare", "state": "INUSE", "replacing": None}])
    run(["pool", "show", "2"], ok(body))
    out = capsys.readouterr().out
    assert "status:" in out and "DEGRADED" in out and "health:" in out
    assert f"scan: resilver in progress, 79.00% done, estimated end {human_time('1796536100')}" in out
    lines = [line.split(None, 4) for line in out.split("devices:\n", 1)[1].splitlines()]
    assert lines[0] == ["PATH", "GROUP", "ROLE", "STATE", "NOTE"]
    assert lines[1] == ["/dev/a", "raid5_group1", "data", "FAULTED", "FAILED, being replaced"]
    assert lines[2] == ["/dev/c", "raid5_group1", "data", "ONLINE", "hot spare standing in"]
    assert lines[3] == ["/dev/d", "raid5_group1", "data", "ONLINE", "-"]
    assert lines[4] == ["/dev/c", "spare", "spare", "INUSE", "spare in use"]
    run(["pool", "show", "2"], ok(dict(POOL, scan={"function": "scrub", "state": "finished", "percent": 100.0,
                                                    "errors": 0, "time_ended": "1796536011"})))
    assert f"scan: scrub finished {human_time('1796536011')} with 0 errors" in capsys.readouterr().out
    run(["pool", "show", "2"], ok(dict(POOL, scan=None)))
    assert "scan: none yet" in capsys.readouterr().out


def test_detail_view_is_key_value_lines(capsys):
    body = dict(POOL, compression=True, disks={"raid6_group1": ["/dev/a", "/dev/b"], "spare": ["/dev/c"]})
    run(["pool", "show", "2"], ok(body))
    out = capsys.readouterr().out
    assert "\nname:" in out and "backup1" in out and "compression:" in out
    assert "size_total:   1.5G (1610612736 bytes)" in out
    assert "  raid6_group1: /dev/a, /dev/b" in out


def test_human_sizes_and_size_arguments():
    assert [human_size(v) for v in ("0", "1023", "1024", "1536", "1610612736", "22613000803", None)] == \
        ["0B", "1023B", "1K", "1.5K", "1.5G", "21.1G", "-"]
    assert size_arg("100G") == "107374182400" and size_arg("1.5T") == str(3 << 39)
    assert size_arg("4096") == "4096" and size_arg("64KiB") == "65536" and size_arg("1m") == "1048576"
    for bad in ("1.5", "G", "-1G", "10X"):
        with pytest.raises(argparse.ArgumentTypeError):
            size_arg(bad)


# -- errors and exit codes ----------------------------------------------------------------------
def test_api_error_prints_message_and_type_and_exits_1(capsys):
    code, _ = run(["pool", "show", "9"], fail(404, "No such pool 9", "NotFoundError"))
    assert code == 1
    captured = capsys.readouterr()
    assert captured.err == "error: No such pool 9 (NotFoundError)\n" and captured.out == ""
    code, _ = run(["--json", "pool", "delete", "9"], fail(409, "Pool has clones", "ConflictError"))
    captured = capsys.readouterr()
    assert code == 1 and captured.out == "" and "(ConflictError)" in captured.err


def test_error_without_json_body_and_429(capsys):
    assert run(["system", "show"], Reply(502, "<html>Bad Gateway</html>"))[0] == 1
    assert "HTTP 502" in capsys.readouterr().err
    assert run(["system", "show"], Reply(429, json.dumps({"error": {"message": "Too many failed logins",
                                                                     "type": "TooManyRequestsError"}}),
                                         {"Retry-After": "42"}))[0] == 1
    assert capsys.readouterr().err == "error: Too many failed logins (retry after 42s) (TooManyRequestsError)\n"


def test_connection_failure_exits_3(capsys):
    code, _ = run(["system", "show"], ConnectionFailure("cannot connect to https://127.0.0.1:8900: Connection refused"))
    assert code == 3 and "cannot connect" in capsys.readouterr().err


def test_real_transport_connection_refused_exits_3(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--url", f"https://127.0.0.1:{port}", "--insecure", "system", "show"]) == 3
    err = capsys.readouterr().err
    assert "warning: --insecure" in err
    assert f"error: cannot connect to https://127.0.0.1:{port}: Connection refused" in err


@pytest.mark.parametrize("argv", [
    ["pool"], ["pool", "create", "x"], ["pool", "create", "x", "--type", "raid9"], ["bogus", "show"],
    ["pool", "update", "2"], ["pool", "delete"], ["volume", "create", "v"], ["volume", "create", "v", "--size", "1Q"],
    ["volume", "create", "c", "--snapshot", "1", "--pool", "2"], ["pool", "show", "1", "--name", "x"],
    ["share", "update", "1"], ["host", "update", "1", "--iqn", "a", "--no-iqns"],
    ["system", "init", "--async", "--wait"],
])
def test_usage_errors_exit_2_without_a_request(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        run(argv)
    assert exited.value.code == 2
    assert "usage: vsnap" in capsys.readouterr().err


def test_help_at_every_level(capsys):
    paths = [[]]
    for resource, verbs in subcommands(build_parser()).items():
        paths.append([resource])
        paths.extend([resource, verb] for verb in verbs)
    assert len(paths) > 50
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0, path
        assert "usage: vsnap" in capsys.readouterr().out
    main_help = build_parser().format_help()
    assert "visible" in main_help.lower() or "ps" in main_help  # --password is discouraged


def subcommands(parser) -> dict[str, dict[str, argparse.ArgumentParser]]:
    def children(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}
    return {name: dict(children(sub)) for name, sub in children(parser).items()}


# -- credentials: flags > environment > config file ----------------------------------------------
def write_config(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_config_file_supplies_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("VSNAP_USER")
    monkeypatch.delenv("VSNAP_PASSWORD")
    conf = write_config(tmp_path / "cli.conf", "[vsnap]\nurl = https://filehost:9000\nuser = fileuser\n"
                                               "password = file%pass\n")
    monkeypatch.setenv("VSNAP_CLI_CONFIG", conf)
    _, t = run(["system", "show"], ok({}))
    assert t.calls[0].url == "https://filehost:9000/api/system" and t.calls[0].auth == ("fileuser", "file%pass")
    # The environment beats the file; flags beat both.
    monkeypatch.setenv("VSNAP_URL", "https://envhost:9001")
    monkeypatch.setenv("VSNAP_PASSWORD", "envpass")
    _, t = run(["system", "show"], ok({}))
    assert t.calls[0].url == "https://envhost:9001/api/system" and t.calls[0].auth == ("fileuser", "envpass")
    _, t = run(["--url", "https://flaghost:9002/", "-u", "flaguser", "-p", "flagpass", "system", "show"], ok({}))
    assert t.calls[0].url == "https://flaghost:9002/api/system" and t.calls[0].auth == ("flaguser", "flagpass")


def test_default_config_path_is_used(monkeypatch, tmp_path):
    monkeypatch.delenv("VSNAP_PASSWORD")
    monkeypatch.setattr(settings, "DEFAULT_CONFIG",
                        write_config(tmp_path / "default.conf", "[vsnap]\nuser = admin\npassword = frometc\n"))
    monkeypatch.setenv("VSNAP_PORT", "8910")
    _, t = run(["system", "show"], ok({}))
    assert t.calls[0].url == "https://127.0.0.1:8910/api/system" and t.calls[0].auth == ("admin", "frometc")


def test_file_password_is_only_used_with_the_file_user(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("VSNAP_PASSWORD")
    monkeypatch.setenv("VSNAP_CLI_CONFIG", write_config(tmp_path / "c.conf", "[vsnap]\nuser = root\npassword = x\n"))
    code, t = run(["-u", "someoneelse", "system", "show"])
    assert code == 2 and t.calls == []
    assert "no password for someoneelse" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_config_readable_by_others_is_refused(monkeypatch, tmp_path, capsys, mode):
    monkeypatch.setenv("VSNAP_CLI_CONFIG", write_config(tmp_path / "c.conf", "[vsnap]\npassword = x\n", mode))
    code, t = run(["system", "show"])
    assert code == 2 and t.calls == []
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and f"mode {mode:04o}" in err and "chmod 600" in err


def test_default_config_readable_by_others_is_refused_too(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", write_config(tmp_path / "d.conf", "[vsnap]\n", 0o644))
    assert run(["system", "show"])[0] == 2
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("user = x\n", "not valid INI"), ("[other]\nuser = x\n", "no [vsnap] section"),
    ("[vsnap]\nusr = x\n", "unknown setting(s) usr"),
])
def test_bad_config_files(monkeypatch, tmp_path, capsys, text, message):
    monkeypatch.setenv("VSNAP_CLI_CONFIG", write_config(tmp_path / "c.conf", text))
    assert run(["system", "show"])[0] == 2
    assert message in capsys.readouterr().err


def test_missing_named_config_and_missing_credentials(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VSNAP_CLI_CONFIG", str(tmp_path / "nope.conf"))
    assert run(["system", "show"])[0] == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.delenv("VSNAP_CLI_CONFIG")
    monkeypatch.delenv("VSNAP_USER")
    assert run(["system", "show"])[0] == 2
    assert "no user" in capsys.readouterr().err


def test_password_prompt_on_a_terminal(monkeypatch):
    monkeypatch.delenv("VSNAP_PASSWORD")
    conn = settings.resolve(argparse.Namespace(url=None, user="bob", password=None, ca=None, insecure=False),
                            prompt=lambda text: "typed", interactive=True)
    assert (conn.user, conn.password, conn.url) == ("bob", "typed", BASE)


def test_partner_password_from_environment(monkeypatch):
    monkeypatch.setenv("VSNAP_REMOTE_PASSWORD", "remote-pw")
    _, t = run(["partner", "create", "10.1.0.5", "--remote-user", "admin"], ok({"id": P_ID}))
    assert t.calls[0].body == {"remote_addr": "10.1.0.5", "remote_user": "admin", "remote_pass": "remote-pw"}


# -- TLS: the appliance's certificate, pinned when its names do not match -----------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")

    def make(name, san):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", f"/CN={name}/O=vsnap", "-addext", f"subjectAltName={san}",
                        "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt")],
                       check=True, capture_output=True)
        return str(d / f"{name}.crt"), str(d / f"{name}.key")

    return {"local": make("local", "DNS:localhost,IP:127.0.0.1"),
            "named": make("named", "DNS:appliance.example"),
            "other": make("other", "DNS:appliance.example")}


def fingerprint(cert_path):
    with open(cert_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def test_tls_settings(certs, tmp_path, capsys):
    local, named = certs["local"][0], certs["named"][0]
    assert tls_settings("https://127.0.0.1:8900", local, False) == (local, None)
    assert tls_settings("https://localhost:8900", local, False) == (local, None)
    assert tls_settings("https://10.9.8.7:8900", local, False) == (local, fingerprint(local))
    assert tls_settings("https://127.0.0.1:8900", named, False) == (named, fingerprint(named))
    assert tls_settings("https://appliance.example", named, False) == (named, None)
    assert tls_settings("https://x", None, False) == (True, None)
    assert tls_settings("https://x", local, True) == (False, None)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(open(local).read() + open(named).read())
    assert tls_settings("https://10.9.8.7", str(bundle), False) == (str(bundle), None)
    assert run(["--ca", str(tmp_path / "missing.crt"), "system", "show"])[0] == 2
    assert "cannot read the CA file" in capsys.readouterr().err


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET answers like /api/system; other methods record the request and answer 404."""
    seen: list = []

    def _answer(self, status, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200, b'{"init_status": "Ready"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
        self._answer(404, b'{"error": {"message": "No such pool 7", "type": "NotFoundError"}}')

    do_DELETE = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_server(certs):
    """A loopback HTTPS server presenting the certificate named `named` (not valid for 127.0.0.1)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs["named"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pinned_certificate_is_accepted_and_another_refused(tls_server, certs, capsys):
    assert main(["--url", tls_server, "--ca", certs["named"][0], "--json", "system", "show"]) == 0
    assert json.loads(capsys.readouterr().out) == {"init_status": "Ready"}
    assert main(["--url", tls_server, "--ca", certs["other"][0], "system", "show"]) == 3
    err = capsys.readouterr().err
    assert "TLS verification" in err and "--ca" in err


def test_what_goes_over_the_wire(tls_server, certs, capsys):
    _Handler.seen.clear()
    ca = ["--url", tls_server, "--ca", certs["named"][0], "-u", "wire", "-p", "pw:with:colons"]
    assert main([*ca, "pool", "addcache", "7", "--disk", "u1"]) == 1
    assert main([*ca, "relationship", "delete", R_ID, "--preserve-replica"]) == 1
    assert capsys.readouterr().err == "error: No such pool 7 (NotFoundError)\n" * 2
    (method, path, headers, body), (method2, path2, headers2, body2) = _Handler.seen
    assert (method, path, json.loads(body)) == ("POST", "/api/pool/7", {"action": "addcache", "disk": "u1"})
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"wire:pw:with:colons").decode()
    assert (method2, path2, body2) == ("DELETE", f"/api/relationship/{R_ID}?preserve_replica=true", b"")


def test_system_trust_store_refuses_a_self_signed_server(tls_server, capsys):
    assert main(["--url", tls_server, "system", "show"]) == 3
    assert "TLS verification" in capsys.readouterr().err


def test_requests_transport_pins_through_its_adapter(certs):
    transport = RequestsTransport(verify=certs["named"][0], pin=fingerprint(certs["named"][0]))
    adapter = transport.session.get_adapter("https://127.0.0.1:1")
    assert adapter.poolmanager.connection_pool_kw["assert_fingerprint"] == fingerprint(certs["named"][0])


# -- long actions: progress on stderr ---------------------------------------------------------
def session(status, sent=None, message=None):
    return ok(dict(SESSION, status=status, size_sent=sent, message=message))


def test_session_start_wait_follows_until_completed(capsys):
    clock = FakeClock()
    code, t = run(["session", "start", R_ID, "--wait"], session("PENDING"), session("ACTIVE", "0"),
                  session("ACTIVE", "1048576"), session("ACTIVE", "3145728"), session("COMPLETED", "4194304"),
                  clock=clock)
    assert code == 0
    assert [c.path for c in t.calls] == [f"/api/relationship/{R_ID}/session"] + ["/api/session/2"] * 4
    assert clock.sleeps == [1.0] * 4
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "session 2: PENDING", "session 2: ACTIVE, 0B sent", "session 2: ACTIVE, 1M sent, 1M/s",
        "session 2: ACTIVE, 3M sent, 1.5M/s", "session 2: COMPLETED, 4M sent, 1.3M/s"]
    assert "status:" in captured.out and "COMPLETED" in captured.out


def test_session_wait_json_keeps_stdout_clean(capsys):
    final = '{"id": "2", "status": "COMPLETED", "size_sent": "10"}'
    code, _ = run(["--json", "session", "start", R_ID, "--wait", "--interval", "0.5"],
                  session("ACTIVE", "5"), Reply(200, final))
    captured = capsys.readouterr()
    assert code == 0 and captured.out == final + "\n" and "ACTIVE" in captured.err


def test_session_failed_exits_1_with_its_message(capsys):
    code, _ = run(["session", "start", R_ID, "--wait"], session("ACTIVE", "100"),
                  session("FAILED", "100", "The replica's pool is out of space"))
    assert code == 1
    err = capsys.readouterr().err
    assert err.endswith("error: session 2 FAILED: The replica's pool is out of space\n")


def test_session_wait_verb(capsys):
    code, t = run(["session", "wait", "2"], session("COMPLETED", "7"))
    assert code == 0 and [c.path for c in t.calls] == ["/api/session/2"]


def test_progress_bar_on_a_terminal():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(stream, "session 2", tty=True, clock=clock)
    for sent in (0, 1 << 20, 3 << 20):
        progress.update("ACTIVE", str(sent))
        clock.sleep(1)
    progress.update("COMPLETED", str(4 << 20), done=True)
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 4 and all("[" in f and "]" in f for f in frames)
    assert "3M sent, 1.5M/s" in frames[2] and frames[3].startswith("session 2 [" + "=" * 24 + "] COMPLETED")
    assert text.endswith("\n") and text.count("\n") == 1


def test_system_init_wait(capsys):
    system = {"init_status": "Initializing", "multipool": True}
    code, t = run(["system", "init", "--wait", "--multipool"], ok(system), ok(system),
                  ok(dict(system, init_status="Ready")))
    assert code == 0
    assert t.calls[0].body == {"action": "init", "async": True, "multipool": True, "skip_pool": False}
    assert [c.method + " " + c.path for c in t.calls[1:]] == ["GET /api/system"] * 2
    assert capsys.readouterr().err.splitlines() == ["init: Initializing", "init: Ready"]
    code, _ = run(["system", "init", "--wait"], ok(system),
                  ok(dict(system, init_status="Failed", message="no unused disks")))
    assert code == 1
    assert capsys.readouterr().err.endswith("error: init ended Failed: no unused disks\n")


def test_console_script_is_declared():
    text = open(os.path.join(os.path.dirname(cli.__file__), "..", "..", "pyproject.toml")).read()
    assert '[project.scripts]\nvsnap = "vsnap.cli:main"' in text
