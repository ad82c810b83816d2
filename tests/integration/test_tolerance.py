"""Tolerant of what clients send, strict about what it means: query parameters the API does not
know (cache-busters) are ignored; a resource's own representation, as GET gave it, is accepted
back by its PUT (read-modify-write), with a changed read-only field refused; body fields the
API does not know are ignored. The fields it knows are validated as strictly as ever."""
from __future__ import annotations

import pytest

from .zfs_tools import PREFIX, raid0_pool, zfs_get

BUSTER = {"_": "1700000000"}


@pytest.fixture(scope="module")
def pool(appliance):
    with raid0_pool(appliance, f"{PREFIX}tol", 1) as made:
        yield made


def _error(r, status=400) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == "ValidationError"
    return r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/pool", "/api/volume", "/api/snapshot", "/api/share", "/api/host",
                                  "/api/disk", "/api/partner", "/api/relationship", "/api/session",
                                  "/api/network", "/api/target", "/api/system"])
def test_an_unknown_query_parameter_is_ignored(appliance, pool, path):
    assert appliance.ok("GET", path, params=BUSTER).keys() == appliance.ok("GET", path).keys()


def test_query_values_it_knows_stay_strict(appliance, pool):
    assert appliance.ok("GET", "/api/pool", params={"id": pool["id"], **BUSTER})["name"] == pool["name"]
    _error(appliance.get("/api/pool", params={"id": "abc", **BUSTER}))


def test_a_pool_takes_its_own_representation_back(appliance, pool):
    body = appliance.ok("GET", f"/api/pool/{pool['id']}")
    assert appliance.ok("PUT", f"/api/pool/{pool['id']}", json=body)["compression"] is True
    body["compression"] = False
    assert appliance.ok("PUT", f"/api/pool/{pool['id']}", json=body)["compression"] is False
    assert zfs_get(pool["name"], "compression") == "off"
    # A changed read-only field is refused, naming it, and nothing of the request is done.
    body["compression"], body["pool_type"] = True, "raid6"
    message = _error(appliance.put(f"/api/pool/{pool['id']}", json=body))
    assert "pool_type: read-only" in message, message
    assert zfs_get(pool["name"], "compression") == "off"
    body["pool_type"], body["id"] = "raid0", "999999"
    assert "id: read-only" in _error(appliance.put(f"/api/pool/{pool['id']}", json=body))
    # Measured values sent back stale are not a change: they are ignored.
    body.update(id=int(pool["id"]), size_used="1", status="DEGRADED", time_updated="0")
    assert appliance.ok("PUT", f"/api/pool/{pool['id']}", json=body)["status"] == "ONLINE"
    # The fields it knows stay strict.
    body["compression"] = "sometimes"
    assert "compression" in _error(appliance.put(f"/api/pool/{pool['id']}", json=body))


def test_a_volume_takes_its_own_representation_back(appliance, pool):
    vol = appliance.ok("POST", "/api/volume", json={"name": "tolv", "volume_type": "filesystem",
                                                    "pool_id": pool["id"], "colour": "blue"})  # unknown: ignored
    body = appliance.ok("GET", f"/api/volume/{vol['id']}")
    body["name"] = "tolv2"
    assert appliance.ok("PUT", f"/api/volume/{vol['id']}", json=body)["name"] == "tolv2"
    body = appliance.ok("GET", f"/api/volume/{vol['id']}")
    for field, value in (("volume_type", "lun"), ("pool_id", "999999"), ("is_clone", True)):
        message = _error(appliance.put(f"/api/volume/{vol['id']}", json={**body, "name": "tolv3", field: value}))
        assert f"{field}: read-only" in message, message
    assert appliance.ok("GET", f"/api/volume/{vol['id']}")["name"] == "tolv2"


def test_a_host_and_an_interface_take_their_own_representation_back(appliance):
    host = appliance.ok("POST", "/api/host", json={"name": "tol-host", "iqns": ["iqn.2026-11.test.vsnap:tol"]})
    try:
        body = appliance.ok("GET", f"/api/host/{host['id']}")
        body["name"] = "tol-host2"
        assert appliance.ok("PUT", f"/api/host/{host['id']}", json=body)["name"] == "tol-host2"
        assert "id: read-only" in _error(appliance.put(f"/api/host/{host['id']}", json={**body, "id": "999999"}))
    finally:
        appliance.delete(f"/api/host/{host['id']}")
    iface = appliance.ok("GET", "/api/network")["networks"][0]
    assert appliance.ok("PUT", f"/api/network/{iface['id']}", json=iface)["services"] == iface["services"]
    assert "name: read-only" in _error(appliance.put(f"/api/network/{iface['id']}",
                                                     json={**iface, "name": iface["name"] + "x"}))


def test_share_options_it_does_not_know_are_still_refused(appliance, pool):
    """Inside share_options an unknown key is an option the client counts on (say, squash):
    ignoring it would give a different share than asked for."""
    vol = appliance.ok("POST", "/api/volume", json={"name": "tolshare", "volume_type": "filesystem",
                                                    "pool_id": pool["id"]})
    assert "squash" in _error(appliance.post(f"/api/volume/{vol['id']}/share", json={
        "share_type": "nfs", "share_options": {"allowed_hosts": ["all"], "squash": "none"}}))
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share", json={"share_type": "nfs",
                                                                         "share_options": {"allowed_hosts": ["all"]}})
    got = appliance.ok("GET", f"/api/share/{share['id']}")
    put = appliance.ok("PUT", f"/api/volume/{vol['id']}/share", json=got)
    assert put.pop("time_updated") >= got.pop("time_updated") and put == got  # the PUT is an update
    assert "vol_id: read-only" in _error(appliance.put(f"/api/volume/{vol['id']}/share",
                                                       json={**got, "vol_id": "999999"}))


def test_an_id_with_leading_zeros_is_the_same_id_in_the_path_and_in_the_query(appliance, pool):
    padded = "0" + pool["id"]
    assert appliance.ok("GET", f"/api/pool/{padded}")["id"] == pool["id"]
    assert appliance.ok("GET", "/api/pool", params={"id": padded})["id"] == pool["id"]
    for path in ("/api/pool/0999999", "/api/pool?id=0999999"):
        assert appliance.get(path).status_code == 404


def test_a_bad_port_is_called_a_port(appliance):
    for port in ("http", 0, 70000):
        message = _error(appliance.post("/api/partner", json={"remote_addr": "127.0.0.1", "remote_user": "x",
                                                               "remote_pass": "y", "remote_api_port": port}))
        assert "remote_api_port: Not a valid port" in message and "bytes" not in message, message


def test_system_stats_without_pools_give_an_empty_dedup_table(appliance):
    for p in appliance.ok("GET", "/api/pool")["pools"]:
        if p["name"].startswith(PREFIX):
            appliance.delete(f"/api/pool/{p['id']}")
    if appliance.ok("GET", "/api/pool")["total"]:
        pytest.fail("the test appliance has pools this suite did not make")
    stats = appliance.ok("GET", "/api/system/stats")
    assert (stats["size_ddt_core"], stats["size_ddt_disk"]) == ("0", "0")
