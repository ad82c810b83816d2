"""Security promises checked against the live server: the whole route table refuses missing
and wrong credentials and accounts outside the vsnap group; request bodies are limited; the
state directory's secrets are root's alone; no password or private key leaks into logs, the
database or answers. (Throttling: test_auth.py; TLS versions and ciphers: test_tls.py.)"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import sqlite3
import ssl
import stat
from pathlib import Path

import pytest
import requests
from flask import Flask

from vsnap.api import init_api

from .appliance import Appliance
from .conftest import GROUP, STATE, OsAccount

STATE_B = Path(os.environ.get("VSNAP_STATE_B", "/var/lib/vsnap-test-b"))
PORT_B = int(os.environ.get("VSNAP_PORT_B", "8920"))
SSH_PORT_B = int(os.environ.get("VSNAP_SSH_PORT_B", "8942"))
AUTO_METHODS = {"HEAD", "OPTIONS"}
# Routes that are not API operations, so not in the OpenAPI document (still behind the login).
NOT_OPERATIONS = {"/api/openapi.json", "/api/docs", "/api/docs/static/<path:filename>", "/static/<path:filename>"}
_CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")


def code_routes() -> list[tuple[str, str]]:
    """Every (rule, method) of the app's url_map, built from the code without any storage:
    the blueprints, the OpenAPI and docs routes, swagger's static files and Flask's own."""
    app = Flask("vsnap")
    init_api(app)
    routes = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods):
            routes.append((rule.rule, method))
    return sorted(set(routes))


ROUTES = code_routes()


def concrete(rule: str) -> str:
    """A real path for a rule: ids that exist on no appliance, a file swagger does ship."""
    def fill(m):
        return "swagger-ui.css" if m.group(1) == "path" else "1"
    return _CONVERTER.sub(fill, rule)


def openapi_rule(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: f"<string:{m.group(1)}>", path)


@pytest.fixture(scope="module")
def sessions():
    """One keep-alive session per credential kind (the walk makes hundreds of requests)."""
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = requests.Session()
        return made[kind]

    yield get
    for s in made.values():
        s.close()


def send(appliance, sessions, kind, method, rule, auth):
    kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH", "DELETE") else {}
    return sessions(kind).request(method, appliance.base + concrete(rule), auth=auth, verify=appliance.cert,
                              timeout=60, **kwargs)


def assert_error(response, status: int, kind: str, method: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    if method == "HEAD":  # no body, by definition
        return
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    assert body["error"]["type"] == kind


def test_route_table_matches_the_openapi_document(appliance):
    """The walk below uses the code's url_map; the live document must name no route it lacks,
    and every API operation in the code must be in the document."""
    doc = appliance.ok("GET", "/api/openapi.json")
    documented = {(openapi_rule(path), method.upper()) for path, item in doc["paths"].items()
                  for method in item if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")}
    in_code = {(rule, method) for rule, method in ROUTES
               if method not in AUTO_METHODS and rule not in NOT_OPERATIONS}
    assert documented - in_code == set(), "documented but not served"
    assert in_code - documented == set(), "served but not documented"
    # The non-operation routes are served (behind the login, checked by the walk).
    for rule in NOT_OPERATIONS - {"/static/<path:filename>"}:
        assert appliance.get(concrete(rule)).status_code == 200, rule
    assert len(ROUTES) >= 100  # every rule with GET/POST/... and HEAD/OPTIONS


@pytest.mark.parametrize("rule,method", ROUTES, ids=[f"{m} {r}" for r, m in ROUTES])
def test_route_refuses_strangers(appliance, admin, outsider, sessions, rule, method):
    # No credentials at all: 401 with a Basic challenge.
    r = send(appliance, sessions, "none", method, rule, None)
    assert_error(r, 401, "AuthenticationError", method)
    assert r.headers["WWW-Authenticate"].startswith("Basic"), r.headers
    # A member's name with a wrong password, and an unknown account: 401.
    for auth in [(admin.name, admin.password + "x"), ("vsnaptest-nobody", "whatever")]:
        r = send(appliance, sessions, "wrong", method, rule, auth)
        assert_error(r, 401, "AuthenticationError", method)
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    # A real OS account with the right password, outside the vsnap group: 403.
    r = send(appliance, sessions, "outsider", method, rule, outsider.auth)
    assert_error(r, 403, "PermissionDeniedError", method)
    # ...and the member gets past the login (whatever the route then says about "1" or {}).
    r = send(appliance, sessions, "admin", method, rule, admin.auth)
    assert r.status_code not in (401, 403), r.text[:300]


# -- request body limit ----------------------------------------------------------------------------
WRITE_ROUTES = [(r, m) for r, m in ROUTES if m in ("POST", "PUT", "PATCH", "DELETE")]


def _raw_request(appliance, method: str, path: str, headers: dict, body_chunks=()):
    conn = http.client.HTTPSConnection("127.0.0.1", appliance.port, timeout=60,
                                       context=ssl.create_default_context(cafile=appliance.cert))
    token = base64.b64encode(f"{appliance.account.name}:{appliance.account.password}".encode()).decode()
    conn.putrequest(method, path)
    for header, value in {"Authorization": f"Basic {token}", "Content-Type": "application/json",
                          **headers}.items():
        conn.putheader(header, value)
    conn.endheaders()
    try:
        for chunk in body_chunks:
            conn.send(chunk)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
        pass  # the server may answer and close before it has everything: the answer counts
    response = conn.getresponse()
    status, raw = response.status, response.read()
    conn.close()
    return status, raw


@pytest.mark.parametrize("rule,method", WRITE_ROUTES, ids=[f"{m} {r}" for r, m in WRITE_ROUTES])
def test_oversized_body_is_413_on_every_write_route(appliance, rule, method):
    # A declared 2 MiB body: answered from the header, without reading it.
    status, raw = _raw_request(appliance, method, concrete(rule), {"Content-Length": str(2 << 20)})
    assert status == 413, raw[:300]
    assert json.loads(raw)["error"]["type"] == "PayloadTooLargeError"


def test_oversized_chunked_body_is_413(appliance):
    """Without a Content-Length the limit must hold while reading: 2 MiB of JSON in chunks."""
    payload = json.dumps({"action": "rescan", "pad": "x" * (2 << 20)}).encode()
    chunks = []
    for i in range(0, len(payload), 65536):
        part = payload[i:i + 65536]
        chunks.append(b"%x\r\n" % len(part) + part + b"\r\n")
    chunks.append(b"0\r\n\r\n")
    status, raw = _raw_request(appliance, "POST", "/api/disk", {"Transfer-Encoding": "chunked"}, chunks)
    assert status == 413, raw[:300]
    assert json.loads(raw)["error"]["type"] == "PayloadTooLargeError"


def test_body_just_under_the_limit_is_read(appliance):
    # The limit is 1 MiB: a body of nearly that size is parsed (and refused for its content).
    body = json.dumps({"action": "explode", "pad": "x" * ((1 << 20) - 100)})
    r = appliance.post("/api/disk", data=body)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["type"] == "ValidationError"


# -- the state directory's secrets ----------------------------------------------------------------
def _is_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY" in f.read(65536)
    except OSError:
        return False


def secret_files(state: Path) -> list[Path]:
    """The database (and its journal), the TLS key, every private key (found by content),
    Samba's password and secrets databases."""
    found = []
    for dirpath, dirnames, filenames in os.walk(state):
        here = Path(dirpath)
        if here == state / "lab" / "disks":
            dirnames[:] = []
            continue
        for name in filenames:
            path = here / name
            if not path.is_file() or path.is_symlink():
                continue
            if (name.startswith("vsnap.db") or name.endswith(".key") or here.name == "private"
                    or name.endswith(".tdb") and "private" in here.parts or _is_private_key(path)):
                found.append(path)
    return found


@pytest.mark.parametrize("state", [STATE, STATE_B], ids=["appliance", "partner"])
def test_state_secrets_are_readable_by_root_only(appliance, state):
    if not state.exists():
        pytest.fail(f"{state} is missing: run the suite with `make test`")
    appliance.ok("GET", "/api/system")  # the server has started and made what it makes
    secrets = secret_files(state)
    names = {p.name for p in secrets}
    # What must be there (the walk found the real files, not nothing).
    for expected in ("vsnap.db", "vsnap.key", "ssh_host_ed25519_key"):
        assert expected in names, (expected, sorted(names))
    problems = []
    st = state.stat()
    if st.st_uid != 0 or st.st_mode & 0o077:
        problems.append(f"{state}: {stat.filemode(st.st_mode)} uid {st.st_uid}")
    for path in secrets:
        for item in (path, path.parent):
            st = item.stat()
            if st.st_uid != 0 or st.st_mode & 0o077:
                problems.append(f"{item}: {stat.filemode(st.st_mode)} uid {st.st_uid}")
    assert sorted(set(problems)) == [], "secrets (or the directories holding them) open to others"


# -- no secret in logs, the database or answers ---------------------------------------------------
def key_bodies(path: Path) -> list[str]:
    """The base64 lines of a PEM/OpenSSH private key, without the armour and without lines
    that hold only public parts: an OpenSSH key file carries its public key (which the
    database keeps for partners, rightly) and a constant header."""
    lines = [line.strip() for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("-----") and len(line.strip()) >= 16]
    public = Path(f"{path}.pub")
    if "OPENSSH" in path.read_text() and lines:
        lines = lines[1:]  # "openssh-key-v1", cipher and kdf "none", key type: the same in every key
        if public.exists():
            blob = base64.b64decode(public.read_text().split()[1])
            encodings = [base64.b64encode(blob[shift:]).decode() for shift in range(3)]
            lines = [line for line in lines if not any(line[:-4] in e for e in encodings)]
    return lines


def readable_files(state: Path) -> list[Path]:
    """Logs of the server and of the lab's services, and the database files."""
    paths = []
    for sub in ("log", "lab/log", "samba/log", "nfs"):
        root = state / sub
        if root.exists():
            paths += [p for p in root.rglob("*") if p.is_file() and p.stat().st_size < (256 << 20)]
    paths += [p for p in state.glob("vsnap.db*") if p.is_file()]
    return paths


def database_dump(state: Path) -> str:
    conn = sqlite3.connect(f"file:{state / 'vsnap.db'}?mode=ro", uri=True, timeout=30)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def leaks(secrets: dict[str, str], texts: dict[str, bytes]) -> list[str]:
    found = []
    for what, secret in secrets.items():
        needles = {secret.encode(), secret.encode("utf-16-le")}
        for where, blob in texts.items():
            if any(n in blob for n in needles):
                found.append(f"{what} in {where}")
    return found


@pytest.fixture
def partner_account():
    """An account of its own for the partner set-up, so its password is told apart from the
    admin's wherever it turns up."""
    account = OsAccount(os.environ.get("VSNAP_TEST_ACCOUNT_PREFIX", "vsnaptest") + "-partner", [GROUP])
    yield account
    account.remove()


def test_no_password_or_private_key_in_logs_database_or_answers(appliance, admin, partner_account):
    if not (STATE_B / "lab" / "lab.env").exists():
        pytest.fail(f"the partner's lab is not set up for {STATE_B}: run the suite with `make test`")
    wrong_password = "Wr0ng-" + os.urandom(9).hex()
    answers: dict[str, bytes] = {}

    def keep(tag, response):
        answers[f"answer {tag} ({response.status_code})"] = response.content + json.dumps(
            dict(response.headers)).encode()
        return response

    # The admin's password in use: logins (which set Samba's password too), a failed login with
    # another secret, requests that fail after login.
    keep("login", appliance.get("/api/system", headers={"Cache-Control": "no-cache"}))
    keep("failed login", appliance.get("/api/system", auth=(admin.name, wrong_password)))
    # (an unknown field is ignored and named in the log: its name, never its value)
    keep("bad body", appliance.post("/api/system", json={"action": "init", "skip_pool": "maybe",
                                                         "password": admin.password}))
    keep("bad field with a password", appliance.post("/api/partner", json={
        "remote_addr": "-oProxyCommand=x", "remote_user": admin.name, "remote_pass": admin.password}))
    # A partnership with appliance B, made with the partner account's password, after a failed
    # attempt with a wrong one; then dissolved on both sides.
    server_b = Appliance(STATE_B, PORT_B, ssh_port=SSH_PORT_B, log_name="server-b",
                         env={"VSNAP_AUTH_FAIL_LIMIT": "100000"}).start()
    server_b.account = admin
    try:
        for server in (appliance, server_b):
            for partner in server.ok("GET", "/api/partner")["partners"]:
                for rel in server.ok("GET", "/api/relationship")["relationships"]:
                    server.delete(f"/api/relationship/{rel['id']}")
                server.delete(f"/api/partner/{partner['id']}")
        body = {"remote_addr": "127.0.0.1", "remote_user": partner_account.name, "remote_api_port": PORT_B}
        r = keep("partner, wrong password",
                 appliance.post("/api/partner", json={**body, "remote_pass": wrong_password}))
        assert r.status_code == 400, r.text
        partner = keep("partner",
                       appliance.post("/api/partner", json={**body, "remote_pass": partner_account.password}))
        assert partner.status_code == 200, partner.text
        keep("partner list", appliance.get("/api/partner"))
        keep("partner list B", server_b.get("/api/partner"))
        keep("audit", appliance.get("/api/audit", params={"limit": 1000}))
        keep("audit B", server_b.get("/api/audit", params={"limit": 1000}))
        # Every GET route's answer too (system, users, metrics, ...).
        for rule, method in ROUTES:
            if method == "GET" and "<" not in rule:
                keep(f"GET {rule}", appliance.get(rule))
        for server in (appliance, server_b):
            for p in server.ok("GET", "/api/partner")["partners"]:
                assert server.delete(f"/api/partner/{p['id']}").status_code == 200
    finally:
        server_b.stop()

    secrets = {"admin password": admin.password, "partner password": partner_account.password,
               "wrong password": wrong_password}
    for state in (STATE, STATE_B):
        for key in [state / "tls" / "vsnap.key", state / "ssh" / "repl_ed25519",
                    state / "ssh" / "ssh_host_ed25519_key"]:
            if key.exists():
                for i, line in enumerate(key_bodies(key)):
                    secrets[f"{key} line {i}"] = line
    assert len(secrets) > 10
    texts = dict(answers)
    for state in (STATE, STATE_B):
        for path in readable_files(state):
            texts[str(path)] = path.read_bytes()
        texts[f"{state} database dump"] = database_dump(state).encode()
    assert any("server-8910" in name or "server-b" in name for name in texts)
    # The check can see what it looks for: the partner account's name is in both audit trails.
    assert partner_account.name.encode() in texts[f"{STATE} database dump"]
    assert leaks(secrets, texts) == []
