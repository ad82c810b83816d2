"""What gunicorn refuses itself is answered with the API's error object, and the OpenAPI document
lists the error statuses every operation can answer with (the fuzz test found 414 as HTML)."""
from __future__ import annotations

import json
import socket
from types import SimpleNamespace

from flask import Flask

from vsnap.api import init_api
from vsnap.app import MAX_BODY_BYTES
from vsnap.http_errors import error_response, write_error


def _parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, json.loads(body)


def test_uri_too_long_is_an_error_object():
    status, headers, body = _parse(error_response(414, "URI Too Long", "Request Line is too large (4494 > 4094)"))
    assert status == "HTTP/1.1 414 URI Too Long"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(json.dumps(body).encode())
    assert body == {"error": {"message": "Request Line is too large (4494 > 4094)", "type": "ValidationError"}}


def test_types_follow_the_status_and_hostile_text_stays_json():
    assert _parse(error_response(403, "Forbidden", "Request forbidden"))[2]["error"]["type"] == "PermissionDeniedError"
    assert _parse(error_response(500, "Internal Server Error", ""))[2] == {
        "error": {"message": "Internal Server Error", "type": "InternalError"}}
    # A malformed request line is quoted in the message: it must not break the JSON or the head.
    _, headers, body = _parse(error_response(400, "Bad Request", "Invalid Request Line '\"}\r\n\u00e9\x00'"))
    assert body["error"]["message"] == "Invalid Request Line '\"}\r\n\u00e9\x00'"
    assert set(headers) == {"Connection", "Content-Type", "Content-Length"}


def test_write_error_sends_it_on_the_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_error(ours, 431, "Request Header Fields Too Large",
                    "Error parsing headers: 'limit request headers fields size'")
        ours.shutdown(socket.SHUT_WR)
        raw = b"".join(iter(lambda: theirs.recv(65536), b""))
    status, _, body = _parse(raw)
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert body["error"]["type"] == "ValidationError"


def test_every_operation_documents_the_common_errors():
    app = Flask("vsnap")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["vsnap"] = SimpleNamespace(
        auth=SimpleNamespace(authenticate=lambda user, password, address: user),
        audit=SimpleNamespace(record=lambda **kw: None))
    init_api(app)
    doc = app.test_client().get("/api/openapi.json", headers={"Authorization": "Basic dTpw"}).get_json()
    operations = [op for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(operations) > 50
    for operation in operations:
        for status in ("400", "401", "404", "405", "413", "414", "429", "431", "500", "503"):
            response = operation["responses"][status]
            if "$ref" in response:  # flask-smorest's own, e.g. #/components/responses/BAD_REQUEST
                response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (operation["operationId"], status)
