"""Every error is the spec's error object: unknown routes, wrong methods, bad JSON, crashes."""
from __future__ import annotations

import shutil

import pytest

from .appliance import Appliance
from .conftest import PORT


def _error(response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}
    assert body["error"]["type"] == type_
    assert body["error"]["message"]
    return body["error"]["message"]


def test_unknown_route_is_404(appliance):
    _error(appliance.get("/api/nonexistent"), 404, "NotFoundError")
    _error(appliance.get("/nonexistent"), 404, "NotFoundError")


def test_unknown_network_interface_is_404(appliance):
    _error(appliance.get("/api/network/nosuchiface0"), 404, "NotFoundError")
    _error(appliance.put("/api/network/nosuchiface0", json={"services": ["nfs"]}), 404, "NotFoundError")


def test_wrong_method_is_405_with_allow(appliance):
    r = appliance.delete("/api/system")
    _error(r, 405, "MethodNotAllowedError")
    assert "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]


@pytest.mark.parametrize("body", [b"{not json", b'{"action": "init",}', b"\xff\xfe", b"[1, 2]", b'"init"', b"null"])
def test_malformed_or_non_object_json_is_400(appliance, body):
    r = appliance.post("/api/system", data=body, headers={"Content-Type": "application/json"})
    _error(r, 400, "ValidationError")


@pytest.mark.parametrize("body,field", [
    ({"action": "explode"}, "action"),
    ({}, "action"),
    ({"action": "init", "async": "maybe"}, "async"),
    ({"action": "init", "multipool": [1]}, "multipool"),
    ({"action": "init", "skip_pool": "sometimes", "colour": "blue"}, "skip_pool"),  # unknown: ignored
])
def test_bad_fields_are_400_naming_the_field(appliance, body, field):
    assert field in _error(appliance.post("/api/system", json=body), 400, "ValidationError")


def test_bad_query_values_are_400(appliance):
    assert "used_as" in _error(appliance.get("/api/disk", params={"used_as": "; rm -rf /"}), 400,
                               "ValidationError")
    # ...while a parameter it does not know (a cache-buster) is ignored
    assert appliance.ok("GET", "/api/disk", params={"bogus": "1"}) == appliance.ok("GET", "/api/disk")


def test_json_without_content_type_is_still_read(appliance):
    r = appliance.post("/api/disk", data='{"action": "rescan"}',
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == {}


def test_oversized_body_is_413(appliance):
    # The server answers from the declared length without reading the body, and closes: a
    # client still pushing megabytes would race that close, so only the headers are sent.
    import base64
    import http.client
    import json
    import ssl
    conn = http.client.HTTPSConnection("127.0.0.1", appliance.port, timeout=30,
                                       context=ssl.create_default_context(cafile=appliance.cert))
    token = base64.b64encode(f"{appliance.account.name}:{appliance.account.password}".encode()).decode()
    conn.putrequest("POST", "/api/system")
    for header, value in {"Authorization": f"Basic {token}", "Content-Type": "application/json",
                          "Content-Length": str(2 << 20)}.items():
        conn.putheader(header, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    body = json.loads(response.read())
    assert body["error"]["type"] == "PayloadTooLargeError"
    conn.close()


def test_unexpected_failure_is_500_without_traceback(admin, tmp_path):
    # A server whose database file is garbage: a real fault, not a planted one.
    from .conftest import STATE
    state = tmp_path / "broken-state"
    (state / "tls").mkdir(parents=True)
    for name in ("vsnap.crt", "vsnap.key"):
        shutil.copy(STATE / "tls" / name, state / "tls" / name)
    (state / "vsnap.db").write_bytes(b"this is not a database" * 100)
    server = Appliance(state, PORT + 2, env={"VSNAP_WORKERS": "1"}, log_name="broken").start()
    try:
        r = server.get("/api/system", auth=admin.auth)
        message = _error(r, 500, "InternalError")
        request_id = r.headers["X-Request-Id"]
        assert request_id in message
        assert "Traceback" not in r.text and "sqlite" not in r.text.lower()
        log = server.log_path.read_text()
        assert request_id in log and "Traceback" in log
    finally:
        server.stop()
