"""The whole API fuzzed with schemathesis against the live test appliance, over the real lab.

Requests are generated from the appliance's own `/api/openapi.json` for every operation (every
path and method), with data that fits the document (positive) and data that does not (negative),
and sent with the admin's credentials. Each answer must:
- not be a 5xx;
- conform to the document: a documented status code, the documented content type, a body that
  matches the documented schema (schemathesis' not_a_server_error, status_code_conformance,
  content_type_conformance and response_schema_conformance checks);
- when it is a rejection (4xx), leave the machine as it was: the pools (`zpool list`), the
  datasets and snapshots of the appliance's pools (`zfs list -t all -r`), the NFS exports file,
  the Samba shares file, the iSCSI targets (`tgtadm --op show`) and the OS accounts
  (`getent passwd`) are read before and after EVERY rejected request and compared.

So that the requests reach past "no such object", the test keeps a small world of objects in a
pool of its own (a shared filesystem, an SMB share, a snapshot, a clone, a LUN mapped to a host)
and lets the generator put their real ids (and the lab disks' uuids) into path parameters and
body fields; whatever the fuzzer deletes or renames is rebuilt before the next operation.

Safety (each operation was thought through; nothing is excluded):
- Accounts: the API has no operation that makes or removes OS accounts (`/api/user` is GET
  only); `getent passwd` is compared anyway, request by request and at the end.
- Network: `PUT /api/network/<id>` sets which services an interface carries; no interface
  setting changes (drivers/network.py only reads `ip -j addr`), but the appliance's packet filter
  (its own nftables table) then refuses new connections to the removed services' ports on that
  interface: never on loopback, which this test talks over, and never SSH. The services of
  every interface are put back at the end, which removes the table.
- Partners: creating a partner, or accepting an offer, connects to the address and API port in
  the body. Any address the server would accept is replaced with 127.0.0.1 and any port it would
  accept with this appliance's own API port, so no packet leaves the machine (and no port of
  another local service is probed); bad values are still sent as generated. The partnering then
  fails fast on the credentials or the certificate fingerprint (400).
- Relationships and sessions need a partner made by this test: there is none, so they stay 404.
  Partners that exist already (left by other tests) are never named by the generator.
- Pools and init: the appliance sees its lab disks only (VSNAP_DISKS). Pools the fuzzer manages
  to make (any name) are deleted at the end, with everything in them; pools of other appliances
  are never listed by this one, and `zpool list` must be the same at the end as at the start.
- Everything the fuzzer made (pools, hosts, partners) is removed at the end, `multipool` and the
  network services restored, and the machine compared with its state before the test.

`make test` runs a short run (VSNAP_FUZZ_REQUESTS, default 300 requests); `make test-long` the long
one (VSNAP_FUZZ_LONG_REQUESTS, default 5,000). The requests actually sent are counted; the figures
are printed and written to $VSNAP_STATE/log/fuzz-<mode>.json.
"""
from __future__ import annotations

import base64
import http.client
import json
import math
import os
import random
import re
import ssl
import subprocess
import time
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from vsnap.app import MAX_BODY_BYTES
from vsnap.errors import ValidationError as VsnapValidationError
from vsnap.services.replication import validate_address

from .conftest import PORT, STATE
from .zfs_tools import PREFIX

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SHORT_REQUESTS = int(os.environ.get("VSNAP_FUZZ_REQUESTS", "300"))
LONG_REQUESTS = int(os.environ.get("VSNAP_FUZZ_LONG_REQUESTS", "5000"))
POOL = f"{PREFIX}fz"
OTHER_RUNS = re.compile(r"vsnap[a-z0-9]*-")  # accounts of test runs (conftest.OsAccount)
ACCOUNT_PREFIX = os.environ.get("VSNAP_TEST_ACCOUNT_PREFIX", "vsnaptest")  # this run's
EXPORTS = STATE / "nfs" / "exports.conf"
SMB_SHARES = STATE / "samba" / "shares.conf"

# Path parameters and body/query fields that name objects: the generator may put real ids there.
PATH_KINDS = {"pool_id": "pool", "vol_id": "volume", "snap_id": "snapshot", "share_id": "share",
              "host_id": "host", "iface_id": "iface"}
BODY_KINDS = {"pool_id": "pool", "vol_id": "volume", "parent_id": "volume", "snapshot_id": "snapshot",
              "snap_id": "snapshot", "host_id": "host"}
QUERY_ID_KINDS = {"/api/pool": "pool", "/api/volume": "volume", "/api/snapshot": "snapshot",
                  "/api/share": "share", "/api/host": "host"}
QUERY_KINDS = {"pool_id": "pool", "parent_id": "volume"}


def _run(*argv: str) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def _read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return "(absent)"


def all_pools() -> list[str]:
    return sorted(subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True,
                                 timeout=120).stdout.split())


def machine_state(system_id: str) -> dict[str, str]:
    """What a rejected request must not change, read with the system's own tools. Pools are the
    appliance's own (stamped with its system id): other appliances on this machine (benchmarks,
    `make run`) may make and destroy theirs meanwhile; those are compared at the end."""
    pools = all_pools()
    own = []
    if pools:
        owners = subprocess.run(["zfs", "get", "-H", "-o", "name,value", "com.vsnap:system", *pools],
                                capture_output=True, text=True, timeout=120).stdout
        own = [line.split("\t")[0] for line in owners.splitlines() if line.endswith("\t" + system_id)]
    return {
        "zpool list": "\n".join(own),
        "zfs list": _run("zfs", "list", "-H", "-t", "all", "-o", "name", "-r", *own) if own else "(no pool)",
        "nfs exports": _read(EXPORTS),
        "smb shares": _read(SMB_SHARES),
        "iscsi targets": own_targets(system_id),
        "accounts": accounts(),
    }


def own_targets(system_id: str) -> str:
    """`tgtadm --op show` of the appliance's own targets (named <prefix>:<system id>[:host<id>]):
    tgtd is machine-wide, and other appliances' targets come and go with their own runs."""
    text = _run("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target")
    blocks, keep = [text.splitlines()[0]], False  # rc=...
    for line in text.splitlines()[1:]:
        if line.startswith("Target "):
            keep = f":{system_id}" in line
        if keep:
            blocks.append(line)
    return "\n".join(blocks)


def accounts() -> str:
    """`getent passwd`, without the accounts of test runs with another prefix on this machine
    (VSNAP_TEST_ACCOUNT_PREFIX: theirs come and go while this one runs)."""
    lines = _run("getent", "passwd").splitlines()
    return "\n".join(line for line in lines
                     if not OTHER_RUNS.match(line) or line.startswith(f"{ACCOUNT_PREFIX}-"))


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [key for key in before if before[key] != after[key]]


class World:
    """Objects of the test's own for the fuzzer to reach, rebuilt when the fuzzer removed them."""

    def __init__(self, appliance):
        self.appliance = appliance
        self.ids: dict[str, list[str]] = {}
        self.pools_before = {p["id"] for p in appliance.ok("GET", "/api/pool")["pools"]}
        self.hosts_before = {h["id"] for h in appliance.ok("GET", "/api/host")["hosts"]}
        self.partners_before = {p["id"] for p in appliance.ok("GET", "/api/partner")["partners"]}
        self.networks_before = {n["id"]: n["services"] for n in appliance.ok("GET", "/api/network")["networks"]}
        self.multipool_before = appliance.ok("GET", "/api/system")["multipool"]
        self.rebuilds = 0
        self.changed = False  # an accepted change request since the last look

    def _exists(self, path: str) -> bool:
        return self.appliance.get(path).status_code == 200

    def intact(self) -> bool:
        checks = [f"/api/pool/{i}" for i in self.ids.get("pool", [])] + \
                 [f"/api/volume/{i}" for i in self.ids.get("volume", [])] + \
                 [f"/api/snapshot/{i}" for i in self.ids.get("snapshot", [])] + \
                 [f"/api/share/{i}" for i in self.ids.get("share", [])] + \
                 [f"/api/host/{i}" for i in self.ids.get("host", [])]
        if not checks or not all(self._exists(path) for path in checks):
            return False
        pool = self.appliance.ok("GET", f"/api/pool/{self.ids['pool'][0]}")
        host = self.appliance.ok("GET", f"/api/host/{self.ids['host'][0]}")
        return pool["name"] == POOL and bool(host["mapped_luns"])

    def ensure(self) -> None:
        """Only after an accepted change may something be missing: a rejected one changes nothing
        (which is checked request by request)."""
        if self.ids and not self.changed:
            return
        self.changed = False
        if self.ids and self.intact():
            self._refresh_disks()
            return
        self.remove_made()
        self.build()

    def remove_made(self) -> None:
        """Deletes, through the API, every pool, host and partner the test or the fuzzer made."""
        a = self.appliance
        for host in a.ok("GET", "/api/host")["hosts"]:
            if host["id"] not in self.hosts_before:
                a.ok("DELETE", f"/api/host/{host['id']}")
        for pool in a.ok("GET", "/api/pool")["pools"]:
            if pool["id"] not in self.pools_before:
                a.ok("DELETE", f"/api/pool/{pool['id']}")
        for partner in a.ok("GET", "/api/partner")["partners"]:
            if partner["id"] not in self.partners_before:
                a.ok("DELETE", f"/api/partner/{partner['id']}")
        self.ids = {}

    def build(self) -> None:
        a = self.appliance
        self.rebuilds += 1
        a.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
        disks = a.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"]
        assert len(disks) >= 4, f"the fuzz test needs 4 unused lab disks, has {len(disks)}"
        pool = a.ok("POST", "/api/pool", json={"name": POOL, "pool_type": "raid0",
                                               "disk_list": [d["uuid"] for d in disks[:2]]})
        fs = a.ok("POST", "/api/volume", json={"name": "fzfs", "volume_type": "filesystem",
                                               "pool_id": pool["id"], "size_total": str(256 << 20)})
        smb = a.ok("POST", "/api/volume", json={"name": "fzsmb", "volume_type": "filesystem",
                                                "pool_id": pool["id"]})
        nfs_share = a.ok("POST", f"/api/volume/{fs['id']}/share", json={
            "share_type": "nfs", "share_options": {"allowed_hosts": ["198.18.0.9"]}})
        smb_share = a.ok("POST", f"/api/volume/{smb['id']}/share", json={"share_type": "smb"})
        snap = a.ok("POST", f"/api/volume/{fs['id']}/snapshot", json={"name": "fzsnap"})
        clone = a.ok("POST", "/api/volume", json={"name": "fzclone", "snapshot_id": snap["id"]})
        lun = a.ok("POST", "/api/volume", json={"name": "fzlun", "volume_type": "lun", "pool_id": pool["id"],
                                                "size_total": str(64 << 20)})
        host = a.ok("POST", "/api/host", json={"name": "fzhost", "iqns": ["iqn.2026-01.test.vsnap:fuzz1"]})
        a.ok("POST", f"/api/volume/{lun['id']}/map", json={"host_id": host["id"]})
        self.ids = {"pool": [pool["id"]], "volume": [fs["id"], smb["id"], clone["id"], lun["id"]],
                    "snapshot": [snap["id"]], "share": [nfs_share["id"], smb_share["id"]],
                    "host": [host["id"]], "iface": list(self.networks_before)}
        self._refresh_disks()

    def _refresh_disks(self) -> None:
        self.ids["disk"] = [d["uuid"] for d in self.appliance.ok("GET", "/api/disk")["disks"]]

    def restore(self) -> None:
        a = self.appliance
        self.remove_made()
        for iface_id, services in self.networks_before.items():
            a.ok("PUT", f"/api/network/{iface_id}", json={"services": services})
        a.ok("POST", "/api/system", json={"action": "init", "skip_pool": True,
                                          "multipool": self.multipool_before})


class Fuzzer:
    def __init__(self, appliance, world: World, mode: str):
        self.appliance = appliance
        self.world = world
        self.mode = mode
        self.system_id = appliance.ok("GET", "/api/system")["id"]
        self.http = requests.Session()
        self.sent = 0
        self.rejected = 0
        self.statuses: Counter = Counter()
        self.per_operation: Counter = Counter()
        self.failures: dict[tuple, str] = {}
        self.timing: Counter = Counter()
        self.state = self._machine_state()

    def _machine_state(self) -> dict[str, str]:
        started = time.monotonic()
        try:
            return machine_state(self.system_id)
        finally:
            self.timing["machine_state"] += time.monotonic() - started

    # -- shaping a generated case -------------------------------------------------------------

    def _known(self, data, kind: str, value):
        ids = self.world.ids.get(kind)
        if ids and data.draw(st.booleans(), label=f"use a real {kind} id"):
            return data.draw(st.sampled_from(ids), label=kind)
        return value

    def shape(self, case, data) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        for name, kind in PATH_KINDS.items():
            if case.path_parameters and name in case.path_parameters:
                case.path_parameters[name] = self._known(data, kind, case.path_parameters[name])
        if isinstance(case.query, dict):
            for name in list(case.query):
                kind = QUERY_KINDS.get(name) or (QUERY_ID_KINDS.get(case.path) if name == "id" else None)
                if kind:
                    case.query[name] = self._known(data, kind, case.query[name])
        body = case.body
        if isinstance(body, dict):
            for name, kind in BODY_KINDS.items():
                if name in body:
                    body[name] = self._known(data, kind, body[name])
            if "disk_list" in body and self.world.ids.get("disk") and data.draw(st.booleans(), label="real disks"):
                body["disk_list"] = data.draw(st.lists(st.sampled_from(self.world.ids["disk"]), min_size=1,
                                                       max_size=6, unique=True), label="disk_list")
            if case.path in ("/api/partner", "/api/partner/accept"):
                contain_partner(body)

    # -- one request --------------------------------------------------------------------------

    def exercise(self, case, data) -> None:
        self.shape(case, data)
        t0 = time.monotonic()
        try:
            response = case.call(base_url=self.appliance.base, session=self.http, auth=self.appliance.account.auth,
                                 verify=self.appliance.cert, timeout=150)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
            return  # refused by the client library before anything was sent
        self.timing["requests"] += time.monotonic() - t0
        self.sent += 1
        self.statuses[response.status_code] += 1
        self.per_operation[case.operation.label] += 1
        try:
            case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": self.appliance.base})
        except FailureGroup as group:
            for failure in group.exceptions:
                self._fail(case, response, failure.title, failure.message)
        except AssertionError as exc:
            self._fail(case, response, type(exc).__name__, str(exc))
        if 400 <= response.status_code < 500:
            self.rejected += 1
            self._check_unchanged(case, response)
        else:
            if case.method.upper() != "GET":
                self.world.changed = True
            if case.method.upper() == "POST" and case.path == "/api/system" and response.status_code == 200:
                self._wait_for_init()
            self.state = self._machine_state()

    def _check_unchanged(self, case, response) -> None:
        before = self.state
        for attempt in range(4):
            after = self._machine_state()
            changed = differences(before, after)
            if not changed:
                return
            time.sleep(1)  # the target watchdog may be rebuilding the targets this very moment
        self._fail(case, response, "rejected request changed the machine",
                   f"changed: {', '.join(changed)}\n" + "\n".join(
                       f"--- {k} before:\n{before[k][:1500]}\n--- after:\n{after[k][:1500]}" for k in changed))
        self.state = after

    def _wait_for_init(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.appliance.ok("GET", "/api/system")["init_status"] != "Initializing":
                return
            time.sleep(0.5)
        raise AssertionError("init did not finish within 300s")

    def _fail(self, case, response, title: str, message: str) -> None:
        key = (case.operation.label, title, response.status_code)
        if key not in self.failures:
            try:
                curl = case.as_curl_command(verify=False)
            except Exception:  # a case the curl formatter cannot render
                curl = repr(case)
            self.failures[key] = f"{message.strip()[:3000]}\n    body: {response.text[:500]!r}\n    {curl[:1500]}"

    # -- the run ------------------------------------------------------------------------------

    def run(self, schema, target: int, time_limit: float, base_seed: int) -> float:
        operations = [result.ok() for result in schema.get_all_operations()]
        per_case = max(1, math.ceil(target / (2 * len(operations))))
        started = time.monotonic()
        round_no = 0
        while self.sent < target and time.monotonic() - started < time_limit:
            for op_no, operation in enumerate(operations):
                if time.monotonic() - started >= time_limit:
                    break
                t0 = time.monotonic()
                self.world.ensure()
                self.timing["world"] += time.monotonic() - t0
                self.state = self._machine_state()
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                    @seed(base_seed + round_no * 1000 + op_no * 2 + (mode == GenerationMode.NEGATIVE))
                    @settings(max_examples=per_case, deadline=None, database=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck), derandomize=False)
                    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
                    def fuzz(case, data):
                        self.exercise(case, data)

                    fuzz()
            round_no += 1
        return time.monotonic() - started

    def report(self, seconds: float, base_seed: int) -> dict:
        return {"mode": self.mode, "requests": self.sent, "rejected_4xx_checked": self.rejected,
                "seconds": round(seconds, 1), "requests_per_second": round(self.sent / max(seconds, 0.001), 1),
                "seed": base_seed, "world_rebuilds": self.world.rebuilds,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "operations": len(self.per_operation), "failures": len(self.failures),
                "seconds_in": {k: round(v, 1) for k, v in self.timing.items()}}


def contain_partner(body: dict) -> None:
    """Addresses and API ports the server would accept are pointed at this appliance itself."""
    for field in ("remote_addr", "local_addr", "address"):
        try:
            validate_address(body.get(field), field)
            body[field] = "127.0.0.1"
        except VsnapValidationError:
            pass
    for field in ("remote_api_port", "local_api_port", "api_port"):
        value = body.get(field)
        if isinstance(value, (int, str)) and not isinstance(value, bool):  # ports come as numbers or strings
            try:
                if 1 <= int(str(value).strip()) <= 65535:
                    body[field] = PORT
            except ValueError:
                pass


def load_schema(appliance):
    """The live appliance's own document (it needs the login like every route)."""
    response = requests.get(appliance.base + "/api/openapi.json", auth=appliance.account.auth,
                            verify=appliance.cert, timeout=60)
    assert response.status_code == 200, response.text
    return schemathesis.openapi.from_dict(response.json())


def _fuzz(appliance, mode: str, target: int, time_limit: float, capsys) -> None:
    schema = load_schema(appliance)
    base_seed = int(os.environ.get("VSNAP_FUZZ_SEED", random.randrange(1 << 30)))
    # Init and pool creates may use every disk the appliance sees: that must be lab disks only.
    lab_env = dict(line.split("=", 1) for line in (STATE / "lab" / "lab.env").read_text().split() if "=" in line)
    lab_disks = set(lab_env.get("VSNAP_DISKS", "").replace(",", " ").split())
    seen = {d["name"] for d in appliance.ok("GET", "/api/disk")["disks"]}
    assert lab_disks and seen <= lab_disks, f"the appliance sees disks outside the lab: {seen - lab_disks}"
    world = World(appliance)
    accounts_before = accounts()
    system_id = appliance.ok("GET", "/api/system")["id"]
    state_before = machine_state(system_id)
    others_before = set(all_pools()) - set(state_before["zpool list"].split())
    fuzzer = Fuzzer(appliance, world, mode)
    try:
        seconds = fuzzer.run(schema, target, time_limit, base_seed)
    finally:
        world.restore()
    figures = fuzzer.report(seconds, base_seed)
    (STATE / "log").mkdir(exist_ok=True)
    (STATE / "log" / f"fuzz-{mode}.json").write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nfuzz ({mode}): {json.dumps(figures)}")
    after = machine_state(system_id)
    failures = "\n\n".join(f"{op} [{status}] {title}:\n{text}" for (op, title, status), text in
                           sorted(fuzzer.failures.items()))
    assert not fuzzer.failures, f"{len(fuzzer.failures)} distinct failures (seed {base_seed}):\n\n{failures}"
    assert fuzzer.sent >= target, f"only {fuzzer.sent} of {target} requests within {time_limit}s"
    assert len(fuzzer.per_operation) == len(list(schema.get_all_operations())), "an operation was never fuzzed"
    assert after["accounts"] == accounts_before, "the OS accounts changed"
    assert after["zpool list"] == state_before["zpool list"], "the appliance's pools are not as they were"
    assert others_before <= set(all_pools()), "a pool the appliance did not make is gone"
    for what in ("nfs exports", "smb shares"):
        assert after[what] == state_before[what], f"{what} are not as they were"


def test_fuzz_every_operation(appliance, capsys):
    _fuzz(appliance, "short", SHORT_REQUESTS, time_limit=float(os.environ.get("VSNAP_FUZZ_SECONDS", "600")),
          capsys=capsys)


@pytest.mark.long
def test_fuzz_every_operation_long(appliance, capsys):
    _fuzz(appliance, "long", LONG_REQUESTS, time_limit=float(os.environ.get("VSNAP_FUZZ_LONG_SECONDS", "3600")),
          capsys=capsys)


# Requests the generator does not make, sent to every operation: the answers must be documented
# too. None of them is a valid request (so nothing may change), whatever the path says. Sent with
# http.client: an oversized body is declared and never sent (the server answers on the length).
ODD_REQUESTS = {
    "no credentials": {"auth": None},
    "wrong password": {"auth": ("vsnap-fuzz-nobody", "wrong")},
    "body over the 1 MiB limit": {"headers": {"Content-Type": "application/json",
                                              "Content-Length": str(MAX_BODY_BYTES + 1)}},
    "URL over the request-line limit": {"query": "pad=" + "x" * 8200},
    "header over the size limit": {"headers": {"X-Pad": "x" * 9000}},
    "body that is not JSON": {"body": b"name=x&action=init",
                              "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    "JSON that is not an object": {"body": b'["action", "init"]', "headers": {"Content-Type": "application/json"}},
}
EXPECTED = {"no credentials": 401, "wrong password": 401, "body over the 1 MiB limit": 413,
            "URL over the request-line limit": 414, "header over the size limit": 431}
BODY_ONLY = ("body that is not JSON", "JSON that is not an object")


def raw_request(appliance, method: str, path: str, *, auth, headers=None, body: bytes | None = None,
                query: str | None = None) -> schemathesis.Response:
    url = path + (f"?{query}" if query else "")
    headers = dict(headers or {})
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if body is not None:
        headers["Content-Length"] = str(len(body))
    context = ssl.create_default_context(cafile=appliance.cert)
    conn = http.client.HTTPSConnection("127.0.0.1", appliance.port, context=context, timeout=60)
    started = time.monotonic()
    try:
        conn.putrequest(method, url, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        content = answer.read()
    finally:
        conn.close()
    received: dict[str, list[str]] = {}
    for name, value in answer.getheaders():
        received.setdefault(name.lower(), []).append(value)
    prepared = requests.Request(method, appliance.base + url, headers=headers).prepare()
    return schemathesis.Response(status_code=answer.status, headers=received, content=content, request=prepared,
                                 elapsed=time.monotonic() - started, verify=True, message=answer.reason,
                                 encoding="utf-8")


def test_error_answers_are_documented(appliance):
    schema = load_schema(appliance)
    system_id = appliance.ok("GET", "/api/system")["id"]
    before = machine_state(system_id)
    failures, sent = {}, 0
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        case = operation.Case(path_parameters={p.name: "1" for p in operation.path_parameters})
        for what, odd in ODD_REQUESTS.items():
            if what in BODY_ONLY and not len(operation.body):
                continue  # a body the route does not read: the request would be served as it is
            response = raw_request(appliance, operation.method.upper(), case.formatted_path,
                                   auth=odd.get("auth", appliance.account.auth), headers=odd.get("headers"),
                                   body=odd.get("body"), query=odd.get("query"))
            sent += 1
            wanted = EXPECTED.get(what)
            if (wanted and response.status_code != wanted) or not 400 <= response.status_code < 500:
                failures[(operation.label, what, response.status_code)] = f"expected {wanted or '4xx'}"
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                for failure in group.exceptions:
                    failures.setdefault((operation.label, what, response.status_code),
                                        f"{failure.title}: {failure.message[:500]}")
    after = machine_state(system_id)
    assert not failures, "\n".join(f"{op} ({what}) -> {status}: {text}"
                                   for (op, what, status), text in sorted(failures.items()))
    assert not differences(before, after), f"refused requests changed {differences(before, after)}"
    assert sent >= len(operations) * (len(ODD_REQUESTS) - len(BODY_ONLY))
