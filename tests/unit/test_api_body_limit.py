"""The request body limit holds on every route, also on those that never read a body."""
from __future__ import annotations

from types import SimpleNamespace

from flask import Flask

from vsnap.api import init_api
from vsnap.app import MAX_BODY_BYTES
from vsnap.errors import AuthenticationError


def _app():
    app = Flask("vsnap")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    events = []
    app.extensions["vsnap"] = SimpleNamespace(
        auth=SimpleNamespace(authenticate=lambda user, password, address: user),
        audit=SimpleNamespace(record=lambda **kw: events.append(kw)))
    init_api(app)
    return app, events


def test_declared_oversized_body_is_413_even_where_no_body_is_read():
    app, events = _app()
    client = app.test_client()
    response = client.open("/api/host/1", method="DELETE", headers={"Authorization": "Basic dTpw"},
                           environ_overrides={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)})
    assert response.status_code == 413
    assert response.get_json() == {"error": {"message": "Request body is too large",
                                             "type": "PayloadTooLargeError"}}
    assert events and events[-1]["status"] == 413 and events[-1]["detail"] is None


def test_credentials_are_checked_before_the_length():
    app, _ = _app()
    def refuse(user, password, address):
        raise AuthenticationError("Authentication required")

    app.extensions["vsnap"].auth.authenticate = refuse
    response = app.test_client().open("/api/host/1", method="DELETE",
                                      environ_overrides={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)})
    assert response.status_code == 401


def _chunked(client, path, payload: bytes):
    import io
    return client.open(path, method="POST", headers={"Authorization": "Basic dTpw", "Transfer-Encoding": "chunked"},
                       input_stream=io.BytesIO(payload),
                       environ_overrides={"wsgi.input_terminated": True})


def test_streamed_body_over_the_limit_is_413_not_parsed_cut_short():
    app, _ = _app()
    # Valid JSON in its first 1 MiB (whitespace after it): cut at the limit it would parse.
    payload = b'{"action": "rescan"}' + b" " * MAX_BODY_BYTES
    response = _chunked(app.test_client(), "/api/disk", payload)
    assert response.status_code == 413
    assert response.get_json()["error"]["type"] == "PayloadTooLargeError"


def test_streamed_body_under_the_limit_is_read():
    app, _ = _app()
    response = _chunked(app.test_client(), "/api/disk", b'{"action": "bogus"}')
    assert response.status_code == 400 and "action" in response.get_json()["error"]["message"]
