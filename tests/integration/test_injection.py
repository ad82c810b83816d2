"""Hostile input never hurts: a corpus of hostile values goes through every field of every
request body, every query parameter and every path id of every operation in the live
/api/openapi.json, against a small world of real objects (so the values get past "no such
object" to the validation and the services).

The corpus: shell metacharacters that would touch canary files, option-like words, path
traversal, NUL and control characters, very long strings (10 kB, 1 MB), unicode confusables
(Cyrillic, fullwidth, RTL override, zero-width joiner, non-ASCII digits), huge and odd numbers
(2**64, -1, 1e308, NaN and Infinity as strings and as raw JSON tokens) and wrong JSON types.

Every answer must be a 4xx error object, except on the few fields that legitimately take free
text (FREE_TEXT below): there the value must be stored verbatim (or ignored, as documented),
is checked, and is removed at once. Then it is proven that nothing was executed and nothing
outside the appliance's datasets was touched: no canary file exists, no command the server
logged ("ran ...") carries a hostile value, and `zfs list -t all`, `zpool list`, /etc/passwd,
/etc/group, /etc/shadow, the NFS exports file, Samba's shares file and tgt's targets are
exactly as before.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from .conftest import PORT, STATE
from .zfs_tools import PREFIX, unused

ROOT = Path(__file__).resolve().parents[2]
POOL = f"{PREFIX}inj"
MIB = 1 << 20
HOST_IQN = "iqn.2026-11.test.vsnap:inj-host"
URL_LIMIT = 3000  # gunicorn refuses request lines over 4094 bytes before the application sees them
CANARY_DIR = Path(tempfile.gettempdir()) / "vsnap-injection-canaries"  # canary files: vsnapcanary<N>
CANARY = "vsnapcanary"


def string_corpus() -> list[str]:
    c = CANARY_DIR / CANARY
    return [
        # shell metacharacters: each would make a canary file if a shell ever ran it
        f"$(touch {c}1)", f"`touch {c}2`", f"x; touch {c}3", f"x | touch {c}4", f"x && touch {c}5",
        f"x > {c}6", f"x\ntouch {c}7", f"$(touch {CANARY}8)", f"x;touch${{IFS}}{c}9", "'\"\\", "*",
        # option-like words
        "-rf", "--help", "-o mountpoint=/", f"-oProxyCommand=touch {c}10", "-", "--",
        # path traversal
        "../../etc/passwd", "/etc/shadow", "..", "../", "/", "./.", "fs0/../../etc",
        # NUL and control characters
        "x\x00y", "\x00", "\x01\x02\x1b[31m\x7f", "x\r\ny", "\t", "", " ",
        # very long
        "A" * 10_000, "B" * 1_000_000,
        # unicode confusables and tricks
        "v\u0430l", "ｆｕｌｌ", "x\u202ey", "x\u200dy", "١٢", "²", "\ud7ff\ufeff", "é" * 300,
    ]


# Numbers as strings: refused by every id, number and boolean field; in a name field they are
# plain names ("NaN" is a fine volume name), so there a 200 is checked and undone (NAME_LIKE).
ODD_NUMBERS = ["NaN", "Infinity", "-1", "18446744073709551616", "1e308", "0x10", "1.5"]


WRONG_TYPES = [[], ["x"], {}, {"a": 1}, True, False, None, 2 ** 64, -1, 1e308, 1.5]
RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999"]  # not JSON, but Python's parser reads them
HOSTILE = string_corpus()
STRINGS = HOSTILE + ODD_NUMBERS
# `make test`: every value in body fields; for path ids and query parameters one or two of each
# kind. The long mode (`make test-long`) sends every value everywhere.
SHORT_URL_VALUES = [HOSTILE[i] for i in (0, 1, 2, 6, 8, 9, 11, 13, 14, 17, 18, 19, 23, 24, 26, 27, 29, 31, 33,
                                         35, 36, 37, 38)] + ["NaN", "-1"]

# Name fields that take a plain name (and the allowed_hosts entries, which take hostnames):
# a value of ODD_NUMBERS may be accepted there; it must then be stored as given, and is undone.
NAME_LIKE = {
    ("POST", "/api/volume"): {"name"},
    ("PUT", "/api/volume/{vol_id}"): {"name"},
    ("PUT", "/api/pool/{pool_id}"): {"name"},
    ("POST", "/api/volume/{vol_id}/snapshot"): {"name"},
    ("POST", "/api/volume/{vol_id}/share"): {"share_options.allowed_hosts.[]"},
    ("PUT", "/api/volume/{vol_id}/share"): {"share_options.allowed_hosts.[]"},
    ("POST", "/api/share"): {"share_options.allowed_hosts.[]"},
}

# Fields that take free text by design (and where the value reaches no command): op -> fields.
# A 200 there is checked (value stored verbatim, or ignored) and undone at once.
FREE_TEXT = {
    ("POST", "/api/host"): {"name"},
    ("PUT", "/api/host/{host_id}"): {"name"},
    ("PUT", "/api/volume/{vol_id}/share"): {"id", "name", "vol_id", "time_created", "time_updated"},
}
SERIAL = {("PUT", "/api/pool/{pool_id}"), ("PUT", "/api/volume/{vol_id}")}
# Query filters on free text: a 200 must hold only objects with exactly that value. A host's name
# is free text, and the POST /api/host step (on another thread) makes hosts named by each value
# for a moment, so a lookup by name may rightly find one; so do the POST /api/volume and snapshot
# steps with the NAME_LIKE values they accept ("NaN" is a fine volume name).
FREE_QUERY = {("GET", "/api/audit"): {"user"}, ("GET", "/api/relationship"): {"vol_name"},
              ("GET", "/api/host"): {"name"}, ("GET", "/api/volume"): {"name"},
              ("GET", "/api/snapshot"): {"name"}}


# -- what must not change ------------------------------------------------------------------------------
def _out(*argv) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=120).stdout


def machine_state() -> dict[str, str]:
    return {
        "zpool list": _out("zpool", "list", "-H", "-o", "name,health"),
        "zfs list": _out("zfs", "list", "-H", "-t", "all", "-o", "name,mountpoint,com.vsnap:vol_id"),
        "tgtadm": _out("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"),
        "exports": (STATE / "nfs" / "exports.conf").read_text(),
        "smb shares": (STATE / "samba" / "shares.conf").read_text(),
        **{path: Path(path).read_text() for path in ("/etc/passwd", "/etc/group", "/etc/shadow")},
    }


def canaries() -> list[str]:
    found = [str(p) for p in CANARY_DIR.iterdir()] if CANARY_DIR.exists() else []
    for d in (ROOT, Path("/"), Path("/tmp"), STATE, Path("/root"), Path("/vsnap")):
        found += [str(p) for p in d.glob(f"*{CANARY}*") if p != CANARY_DIR]
    out = subprocess.run(["find", "/vsnap", str(STATE), "-xdev", "-name", f"*{CANARY}*"],
                         capture_output=True, text=True, timeout=120).stdout
    return sorted(set(found + out.split()))


def executed_with_hostile_values(log: str) -> list[str]:
    """Lines of commands the server ran whose arguments carry a corpus value."""
    hostile = [v for v in HOSTILE if v.strip() and v not in ("-", "*")]
    found = []
    for line in log.splitlines():
        m = re.search(r" ran (.*): rc=\S+ in [\d.]+s$", line)
        if not m:
            continue
        text = m.group(1)
        try:
            args = shlex.split(text)
        except ValueError:  # cut at 240 characters inside a quote
            args = text.split()
        for v in hostile:
            if v in args or any(a.endswith("/" + v) for a in args) or (len(v) >= 6 and v[:100] in text) \
                    or CANARY in text:
                found.append(line)
                break
    return found


# -- the world ---------------------------------------------------------------------------------------
def _sweep(app) -> None:
    for h in app.ok("GET", "/api/host")["hosts"]:
        if h["name"].startswith("inj-") or HOST_IQN in h["iqns"] or h["name"] in HOSTILE:
            app.delete(f"/api/host/{h['id']}")
    for p in app.ok("GET", "/api/pool")["pools"]:
        if p["name"].startswith(POOL) or p["name"] in ODD_NUMBERS:  # (renamed by an interrupted run)
            vols = app.ok("GET", "/api/volume", params={"pool_id": p["id"]})["volumes"]
            for v in sorted(vols, key=lambda v: (not v["is_clone"], v["volume_type"] != "filebackedlun")):
                app.delete(f"/api/volume/{v['id']}")
            assert app.delete(f"/api/pool/{p['id']}").status_code == 200


@pytest.fixture(scope="module")
def world(appliance):
    app = appliance
    app.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    _sweep(app)
    disks = unused(app, 2)
    pool = app.ok("POST", "/api/pool", json={"name": POOL, "pool_type": "raid0", "disk_list": [disks[0]["uuid"]]})
    try:
        def volume(name, kind, **extra):
            return app.ok("POST", "/api/volume",
                          json={"name": name, "volume_type": kind, "pool_id": pool["id"], **extra})

        fs0, fs1 = volume("fs0", "filesystem"), volume("fs1", "filesystem")
        lun0 = volume("lun0", "lun", size_total=8 * MIB)
        image = Path(f"/vsnap/{POOL}/fs1/img.bin")
        with open(image, "wb") as f:
            f.truncate(8 * MIB)
        snap = app.ok("POST", f"/api/volume/{fs0['id']}/snapshot", json={"name": "s0"})
        share = app.ok("POST", f"/api/volume/{fs0['id']}/share",
                       json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
        host = app.ok("POST", "/api/host", json={"name": "inj-h0", "iqns": [HOST_IQN]})
        lo = app.ok("GET", "/api/network/lo")
        yield {"pool": pool, "fs0": fs0, "fs1": fs1, "lun0": lun0, "snap": snap, "share": share, "host": host,
               "lo_services": lo["services"], "spare_disk": disks[1]["uuid"],
               "pubkey": (STATE / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]}
    finally:
        _sweep(app)


def path_ids(w) -> dict[str, str]:
    return {"pool_id": w["pool"]["id"], "vol_id": w["fs0"]["id"], "snap_id": w["snap"]["id"],
            "share_id": w["share"]["id"], "host_id": w["host"]["id"], "iface_id": "lo",
            "partner_id": "0" * 32, "rel_id": "0" * 32, "session_id": "999999"}


def base_body(w, method: str, path: str, field: str | None) -> dict:
    """A body that is valid (or fails only at its very end), so a hostile value in `field` is
    what the server has to refuse."""
    nfs = {"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}}
    key = (method, path)
    if key == ("POST", "/api/system"):
        return {"action": "init", "skip_pool": True, "multipool": True}
    if key == ("POST", "/api/disk"):
        return {"action": "rescan"}
    if key == ("PUT", "/api/network/{iface_id}"):
        return {"services": list(w["lo_services"])}
    if key == ("POST", "/api/pool"):  # a disk that does not exist: the end of the road is a 400
        return {"name": f"{POOL}x", "pool_type": "raid0", "disk_list": ["00000000-0000-4000-8000-000000000000"]}
    if key == ("POST", "/api/pool/{pool_id}"):
        return {"action": "addspare", "disk_list": ["00000000-0000-4000-8000-000000000000"]}
    if key == ("POST", "/api/volume"):
        if field in ("parent_id", "parent_path"):
            return {"name": "injflb", "volume_type": "filebackedlun", "parent_id": w["fs1"]["id"],
                    "parent_path": "img.bin"}
        if field == "snapshot_id":
            return {"name": "injclone", "snapshot_id": w["snap"]["id"]}
        if field == "size_block":
            return {"name": "injlun", "volume_type": "lun", "pool_id": w["pool"]["id"], "size_total": 8 * MIB}
        return {"name": "injvol", "volume_type": "filesystem", "pool_id": w["pool"]["id"]}
    if key == ("POST", "/api/volume/{vol_id}/map"):
        return {"host_id": w["host"]["id"]}
    if key == ("POST", "/api/volume/{vol_id}/relationship"):
        return {"partner_id": "0" * 32}
    if key in (("POST", "/api/volume/{vol_id}/share"), ("PUT", "/api/volume/{vol_id}/share")):
        return copy.deepcopy(nfs)
    if key == ("POST", "/api/share"):
        return {**copy.deepcopy(nfs), "vol_id": w["fs1"]["id"]}
    if key == ("POST", "/api/host"):
        return {"name": "inj-new", "iqns": []}
    if key == ("POST", "/api/host/{host_id}"):
        return {"action": "map", "vol_id": w["lun0"]["id"]}
    if key == ("POST", "/api/partner"):  # this appliance itself, with an unknown account: a 400 at the end
        return {"remote_addr": "127.0.0.1", "remote_user": "vsnaptest-nobody", "remote_pass": "x",
                "remote_api_port": PORT}
    if key == ("POST", "/api/partner/accept"):  # refused last, for its certificate fingerprint
        return {"id": "0" * 32, "system_id": "0" * 32, "address": "127.0.0.1", "api_port": PORT, "ssh_port": 22,
                "ssh_public_key": " ".join(w["pubkey"]), "ssh_host_key": " ".join(w["pubkey"]),
                "tls_fingerprint": "0" * 64}
    if key == ("POST", "/api/session/{session_id}"):
        return {"action": "cancel"}
    return {}


def resolve(doc: dict, schema: dict) -> dict:
    """A schema with its $ref followed; `anyOf: [$ref, {nullable}]` (a nullable nested object)
    becomes the referenced object, nullable."""
    nullable = bool(schema.get("nullable"))
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
        elif "anyOf" in schema or "allOf" in schema:
            branches = schema.get("anyOf") or schema.get("allOf")
            nullable = nullable or any(b.get("nullable") for b in branches)
            schema = next((b for b in branches if "$ref" in b), branches[0])
        else:
            break
    if schema.get("properties") and "type" not in schema:
        schema = {**schema, "type": "object"}
    return {**schema, "nullable": nullable or bool(schema.get("nullable"))}


def body_fields(doc, schema, prefix=()) -> list[tuple[tuple[str, ...], dict]]:
    """(path of the field in the body, its schema), nested objects included, array items as '[]'."""
    schema = resolve(doc, schema)
    fields = []
    for name, sub in schema.get("properties", {}).items():
        sub = resolve(doc, sub)
        if sub.get("readOnly"):
            continue
        here = prefix + (name,)
        fields.append((here, sub))
        if sub.get("properties"):
            fields += body_fields(doc, sub, here)
        elif sub.get("type") == "array":
            fields.append((here + ("[]",), resolve(doc, sub.get("items", {}))))
    return fields


def values_for(schema: dict) -> list:
    """Every corpus string, then the wrong types (a type the field takes is left out: a boolean
    for a boolean, null where null is allowed; huge and negative numbers stay for numbers)."""
    kind = schema.get("type")
    wrong = [v for v in WRONG_TYPES if not (
        (v is None and schema.get("nullable")) or (isinstance(v, bool) and kind == "boolean")
        or (isinstance(v, list) and kind == "array") or (isinstance(v, dict) and kind == "object" and not v))]
    return STRINGS + wrong + [RawToken(t) for t in RAW_TOKENS]


class RawToken:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def place(body: dict, field: tuple[str, ...]) -> dict:
    """The body with the marker "__VALUE__" at the field (alone in its list for '[]')."""
    body = copy.deepcopy(body)
    names = [n for n in field if n != "[]"]
    node = body
    for name in names[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[names[-1]] = ["__VALUE__"] if field[-1] == "[]" else "__VALUE__"
    return body


def encode(body: dict, value) -> bytes:
    text = json.dumps(body)
    token = value.text if isinstance(value, RawToken) else json.dumps(value)
    return text.replace('"__VALUE__"', token, 1).encode()


def short(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:40] + f"...({len(text)} chars)"


def is_error_object(r) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
            and set(body["error"]) == {"message", "type"})


class Walk:
    """The requests of one operation (operations run on a few threads, each its own session)."""

    def __init__(self, app, w, doc, long: bool):
        self.app, self.w, self.doc, self.long = app, w, doc, long
        self.ids = path_ids(w)
        self.failures: list[str] = []
        self.accepted: dict[str, int] = {}
        self.counts = {"requests": 0, "fields": 0, "query": 0, "path": 0}

    def send(self, http, method, path, *, body=None, params=None):
        self.counts["requests"] += 1
        return http.request(method, self.app.base + path, params=params, data=body, verify=self.app.cert,
                            auth=self.app.account.auth, timeout=120, headers={"Content-Type": "application/json"})

    def judge(self, r, what: str, may_accept: bool) -> bool:
        """True when the answer was an accepted (200) value, which the caller checks and undoes."""
        if 400 <= r.status_code < 500 and is_error_object(r):
            return False
        if r.status_code == 200 and may_accept:
            self.accepted[what.split("=")[0]] = self.accepted.get(what.split("=")[0], 0) + 1
            return True
        self.failures.append(f"{what}: {r.status_code} {r.text[:200]!r}")
        return r.status_code == 200

    def operation(self, method: str, path: str, op: dict) -> None:
        w, app = self.w, self.app
        http = requests.Session()
        concrete = re.sub(r"\{(\w+)\}", lambda m: self.ids[m.group(1)], path)
        if path == "/api/volume/{vol_id}/map":
            concrete = f"/api/volume/{w['lun0']['id']}/map"
        if method == "POST" and path == "/api/volume/{vol_id}/share":  # fs0 is shared already
            concrete = f"/api/volume/{w['fs1']['id']}/share"
        url_values = STRINGS if self.long else SHORT_URL_VALUES
        # -- body fields: every value
        schema = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
        for field, field_schema in (body_fields(self.doc, schema) if schema else []):
            self.counts["fields"] += 1
            dotted = ".".join(field)
            free = dotted in FREE_TEXT.get((method, path), set())
            name_like = dotted in NAME_LIKE.get((method, path), set())
            for value in values_for(field_schema):
                body = place(base_body(w, method, path, field[0]), field)
                r = self.send(http, method, concrete, body=encode(body, value))
                what = f"{method} {path} {dotted}={short(value)}"
                may = free or (name_like and value in ODD_NUMBERS)
                if self.judge(r, what, may):
                    check_and_undo(app, w, method, path, dotted, value, r, self.failures, what, expected=may)
        # -- query parameters (strings only: a query string has no types)
        for param in op.get("parameters", []):
            if param["in"] != "query":
                continue
            self.counts["query"] += 1
            free = param["name"] in FREE_QUERY.get((method, path), set())
            for value in url_values:
                value = value[:URL_LIMIT // 9] if len(quote(value)) > URL_LIMIT else value
                r = self.send(http, method, concrete, params={param["name"]: value})
                what = f"{method} {path}?{param['name']}={short(value)}"
                if self.judge(r, what, free) and free:
                    found = r.json()
                    rows = found["events"] if "events" in found else \
                        found["relationships"] if "relationships" in found else [found]
                    if any(row.get(param["name"]) != value for row in rows):
                        self.failures.append(f"{what}: the filter let others through: {r.text[:200]}")
        # -- path ids
        for param in re.findall(r"\{(\w+)\}", path):
            self.counts["path"] += 1
            for value in url_values:
                value = value[:URL_LIMIT // 9] if len(quote(value, safe="")) > URL_LIMIT else value
                encoded = quote(value, safe="").replace(".", "%2E") or "%20"  # else the client resolves ".."
                hostile = path.replace("{" + param + "}", encoded)
                hostile = re.sub(r"\{(\w+)\}", lambda m: self.ids[m.group(1)], hostile)
                body = json.dumps(base_body(w, method, path, None)).encode() if method in ("POST", "PUT") else None
                r = self.send(http, method, hostile, body=body)
                if self.judge(r, f"{method} {hostile[:120]}", False):
                    self.failures.append(f"{method} {hostile[:120]}: accepted a hostile id")
        http.close()


def _walk(appliance, world, long: bool) -> dict:
    app, w = appliance, world
    doc = app.ok("GET", "/api/openapi.json")
    CANARY_DIR.mkdir(exist_ok=True)
    for p in CANARY_DIR.iterdir():
        p.unlink()
    assert canaries() == []
    before = machine_state()
    log_start = app.log_path.stat().st_size
    operations = [(method.upper(), path, op) for path, item in doc["paths"].items()
                  for method, op in item.items() if method in ("get", "post", "put", "delete", "patch")]
    assert len(operations) > 50
    walk = Walk(app, w, doc, long)
    # Four at a time; the renames of the pool and of fs0 (which others use) run alone afterwards.
    serial = [o for o in operations if (o[0], o[1]) in SERIAL]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(walk.operation, *o) for o in operations if o not in serial]:
            future.result()
    for o in serial:
        walk.operation(*o)

    # -- nothing was executed, nothing outside the appliance's datasets was touched
    time.sleep(1)
    after = machine_state()
    with open(app.log_path, "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    corpus = len(STRINGS) + len(WRONG_TYPES) + len(RAW_TOKENS)
    figures = {"corpus": corpus, "strings": len(STRINGS), "wrong_types": len(WRONG_TYPES),
               "raw_tokens": len(RAW_TOKENS), "operations": len(operations), **walk.counts,
               "accepted": walk.accepted}
    print(f"\ninjection ({'long' if long else 'short'}): {figures}")
    assert walk.failures == [], (f"{len(walk.failures)} answers were not 4xx error objects:\n"
                                 + "\n".join(walk.failures[:40]))
    assert canaries() == []
    assert executed_with_hostile_values(log) == []
    assert " ran " in log  # the check above reads real command lines
    for key in before:
        assert after[key] == before[key], f"{key} changed"
    return figures


def test_hostile_values_in_every_field_are_refused_and_run_nothing(appliance, world):
    figures = _walk(appliance, world, long=False)
    assert figures["requests"] > 3000


@pytest.mark.long
def test_hostile_values_everywhere_long(appliance, world):
    figures = _walk(appliance, world, long=True)
    assert figures["requests"] > 7000


def check_and_undo(app, w, method, path, field, value, r, failures, what, expected) -> None:
    """A 200 where a value may be accepted: it is stored as given (or ignored, as documented),
    and is undone at once. Any other 200 is already a failure: what it made is removed."""
    body = r.json()
    key = (method, path)
    stored = None
    if key == ("POST", "/api/host"):
        stored = app.ok("GET", f"/api/host/{body['id']}")["name"]
        app.ok("DELETE", f"/api/host/{body['id']}")
    elif key == ("PUT", "/api/host/{host_id}"):
        stored = app.ok("GET", f"/api/host/{w['host']['id']}")["name"]
        app.ok("PUT", f"/api/host/{w['host']['id']}", json={"name": w["host"]["name"]})
    elif key == ("POST", "/api/volume"):
        stored = app.ok("GET", f"/api/volume/{body['id']}")["name"]
        app.ok("DELETE", f"/api/volume/{body['id']}")
    elif key == ("PUT", "/api/volume/{vol_id}"):
        stored = app.ok("GET", f"/api/volume/{w['fs0']['id']}")["name"]
        app.ok("PUT", f"/api/volume/{w['fs0']['id']}", json={"name": w["fs0"]["name"]})
    elif key == ("PUT", "/api/pool/{pool_id}"):
        stored = app.ok("GET", f"/api/pool/{w['pool']['id']}")["name"]
        app.ok("PUT", f"/api/pool/{w['pool']['id']}", json={"name": w["pool"]["name"]})
    elif key == ("POST", "/api/volume/{vol_id}/snapshot"):
        stored = app.ok("GET", f"/api/snapshot/{body['id']}")["name"]
        app.ok("DELETE", f"/api/snapshot/{body['id']}")
    elif key in (("POST", "/api/volume/{vol_id}/share"), ("POST", "/api/share")):
        hosts = app.ok("GET", f"/api/share/{body['id']}")["share_options"]["allowed_hosts"]
        stored = hosts[0] if hosts and field.endswith("[]") else None
        app.ok("DELETE", f"/api/share/{body['id']}")
    elif key == ("PUT", "/api/volume/{vol_id}/share"):
        share = app.ok("GET", f"/api/share/{w['share']['id']}")
        if field.endswith("[]"):
            stored = share["share_options"]["allowed_hosts"][0]
            app.ok("PUT", f"/api/volume/{w['fs0']['id']}/share",
                   json={"share_type": "nfs", "share_options": w["share"]["share_options"]})
        else:  # the read-only fields of GET, sent back: ignored
            for k in ("id", "name", "vol_id", "share_type", "share_options"):
                if share[k] != w["share"][k]:
                    failures.append(f"{what}: the share's {k} became {share[k]!r}")
            return
    elif key == ("POST", "/api/host/{host_id}"):
        app.post(f"/api/host/{w['host']['id']}", json={"action": "unmap", "vol_id": w["lun0"]["id"]})
    elif key == ("POST", "/api/pool") and "id" in body:
        app.delete(f"/api/pool/{body['id']}")
    if expected and stored is not None and stored not in (value, value.lower() if isinstance(value, str) else value):
        failures.append(f"{what}: stored as {stored!r}")
    elif expected and stored is None:
        failures.append(f"{what}: accepted, but the value is not to be found")
