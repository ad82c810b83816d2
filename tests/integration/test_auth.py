"""Basic auth against real OS accounts through PAM: the 401/403 matrix, expiry, throttling."""
from __future__ import annotations

import time

import pytest
import requests

from .appliance import Appliance
from .conftest import PORT, STATE

# One route of every resource and method kind, including an unknown route: nothing answers
# before the caller is known.
ROUTES = [
    ("GET", "/api/system"), ("POST", "/api/system"), ("GET", "/api/user"),
    ("GET", "/api/network"), ("PUT", "/api/network/lo"), ("GET", "/api/target"),
    ("GET", "/api/disk"), ("POST", "/api/disk"), ("GET", "/api/openapi.json"),
    ("GET", "/api/docs"), ("GET", "/api/no-such-thing"),
]


@pytest.mark.parametrize("method,path", ROUTES)
def test_missing_credentials_are_401_with_challenge(appliance, method, path):
    r = appliance.request(method, path, auth=None, json={"action": "rescan"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.json()["error"]["type"] == "AuthenticationError"


@pytest.mark.parametrize("method,path", ROUTES)
def test_wrong_password_and_unknown_user_are_401(appliance, admin, method, path):
    for auth in [(admin.name, admin.password + "x"), ("vsnaptest-nobody", "whatever")]:
        r = appliance.request(method, path, auth=auth, json={"action": "rescan"})
        assert r.status_code == 401, (auth, r.text)
        assert r.json()["error"]["type"] == "AuthenticationError"


@pytest.mark.parametrize("method,path", ROUTES)
def test_account_outside_vsnap_group_is_403(appliance, outsider, method, path):
    r = appliance.request(method, path, auth=outsider.auth, json={"action": "rescan"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "PermissionDeniedError"


def test_member_of_vsnap_group_gets_in(appliance, admin):
    r = appliance.get("/api/system", auth=admin.auth)
    assert r.status_code == 200
    assert r.json()["api_version"] == "1.0"


def test_other_auth_schemes_are_refused(appliance):
    r = appliance.get("/api/system", auth=None, headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401
    r = appliance.get("/api/system", auth=None, headers={"Authorization": "Basic !!notbase64"})
    assert r.status_code == 401


def test_changed_password_stops_working_within_seconds(appliance, admin):
    old = admin.password
    assert appliance.get("/api/system", auth=admin.auth).status_code == 200
    admin.set_password(old + "-new")
    try:
        deadline = time.monotonic() + 10
        status = 200
        while time.monotonic() < deadline:
            status = appliance.get("/api/system", auth=(admin.name, old)).status_code
            if status == 401:
                break
            time.sleep(0.5)
        assert status == 401, "the old password still worked 10 s after it was changed"
        assert appliance.get("/api/system", auth=admin.auth).status_code == 200
    finally:
        admin.set_password(old)  # the session's server logs in as this account


def test_user_list_shows_group_members_only(appliance, admin, outsider):
    body = appliance.ok("GET", "/api/user")
    names = {u["name"]: u for u in body["users"]}
    assert body["total"] == len(body["users"])
    assert admin.name in names and outsider.name not in names
    entry = names[admin.name]
    assert entry == {"gid": entry["gid"], "name": admin.name, "role": "vsnap_admin", "uid": str(admin.uid)}
    assert entry["gid"].isdigit()


def test_repeated_failures_are_throttled_per_address(admin):
    # A server of its own with a small limit, so the main server's clients are not locked out.
    # Two workers: failures are counted for the appliance, not per worker process. New
    # connections each time, so the requests spread over both workers.
    server = Appliance(STATE, PORT + 1, env={"VSNAP_AUTH_FAIL_LIMIT": "3",
                                             "VSNAP_AUTH_FAIL_WINDOW": "4",
                                             "VSNAP_WORKERS": "2"}, log_name="throttle").start()
    try:
        # Failures are shared through the database: the 401 matrix's failures from this address
        # moments ago count too, until the window has passed.
        time.sleep(4.5)
        for _ in range(3):
            assert server.get("/api/system", auth=(admin.name, "wrong")).status_code == 401
        for _ in range(4):  # whichever worker answers
            r = server.get("/api/system", auth=admin.auth)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["type"] == "TooManyRequestsError"
            assert int(r.headers["Retry-After"]) >= 1
        time.sleep(4.5)
        assert server.get("/api/system", auth=admin.auth).status_code == 200
    finally:
        server.stop()


def test_plain_http_is_refused(appliance):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{appliance.port}/api/system", timeout=5)
