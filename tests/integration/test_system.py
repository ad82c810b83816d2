"""System info from the real machine, init with skip_pool, targets, the OpenAPI document."""
from __future__ import annotations

import re
import subprocess
import time

from .zfs_tools import PREFIX, unused

SPEC_FIELDS = {"fqdn", "hostname", "id", "init_status", "multipool", "api_version", "nfs_version",
               "nginx_version", "os_name", "os_version", "samba_version", "uwsgi_version",
               "vsnap_version", "zfs_version"}


def _dpkg_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                          text=True, check=True).stdout


def test_system_info_comes_from_the_machine(appliance):
    info = appliance.ok("GET", "/api/system")
    assert SPEC_FIELDS <= set(info)
    assert re.fullmatch(r"[0-9a-f]{32}", info["id"])
    assert info["hostname"] == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert info["samba_version"] == _dpkg_version("samba")
    assert info["nfs_version"] == _dpkg_version("nfs-ganesha")
    assert info["zfs_version"] == "zfs-fuse " + _dpkg_version("zfs-fuse")
    assert info["os_name"] == "Debian GNU/Linux"
    assert info["os_version"] == open("/etc/debian_version").read().strip()
    assert info["init_status"] in ("Not Initialized", "Initializing", "Ready", "Failed")
    assert isinstance(info["multipool"], bool)


def test_system_id_is_kept_across_restarts(appliance):
    before = appliance.ok("GET", "/api/system")["id"]
    appliance.restart()
    assert appliance.ok("GET", "/api/system")["id"] == before


def test_init_with_skip_pool_sync_and_async(appliance):
    info = appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True,
                                                     "multipool": True})
    assert info["init_status"] == "Ready" and info["multipool"] is True

    info = appliance.ok("POST", "/api/system", json={"action": "init", "async": True,
                                                     "skip_pool": True, "multipool": False})
    assert info["init_status"] in ("Initializing", "Ready")
    deadline = time.monotonic() + 30
    while info["init_status"] == "Initializing" and time.monotonic() < deadline:
        time.sleep(0.2)
        info = appliance.ok("GET", "/api/system")
    assert info["init_status"] == "Ready"
    assert info["multipool"] is False
    # Kept in the database, not in the process.
    appliance.restart()
    assert appliance.ok("GET", "/api/system")["init_status"] == "Ready"


def test_init_changes_only_what_it_names(appliance, pools):
    """An init without multipool leaves it as it is: two pools, and a third may still be made."""
    disks = unused(appliance, 3)
    pools(f"{PREFIX}i1", "raid0", disks[:1])  # the fixture's init turned multipool on
    pools(f"{PREFIX}i2", "raid0", disks[1:2])
    for body in ({"action": "init", "skip_pool": True}, {"action": "init", "async": True, "skip_pool": True}):
        appliance.ok("POST", "/api/system", json=body)
        deadline = time.monotonic() + 30
        while (info := appliance.ok("GET", "/api/system"))["init_status"] == "Initializing" \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (info["init_status"], info["multipool"]) == ("Ready", True), body
    pools(f"{PREFIX}i3", "raid0", disks[2:3])
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": False})
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True})
    assert appliance.ok("GET", "/api/system")["multipool"] is False  # what was set explicitly stays too
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})


def test_target_names_carry_the_system_id(appliance):
    system_id = appliance.ok("GET", "/api/system")["id"]
    host = appliance.ok("POST", "/api/host", json={"name": "target-names", "iqns": []})
    try:
        body = appliance.ok("GET", "/api/target")
        assert body["total"] == len(body["targets"]) >= 1
        for target in body["targets"]:
            assert target["type"] == "iqn"
            # LIO: one target for all hosts; tgt (the lab): one per host, named for it
            assert re.fullmatch(r"iqn\.\d{4}-\d{2}\.[a-z0-9.-]+\.vsnap:" + system_id + r"(:host\d+)?",
                                target["wwn"])
        assert host["id"] in [t["host_id"] for t in body["targets"]] or \
            [t["host_id"] for t in body["targets"]] == [None]
    finally:
        appliance.ok("DELETE", f"/api/host/{host['id']}")


def test_openapi_document_covers_every_route(appliance):
    doc = appliance.ok("GET", "/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    expected = {("/api/system", "get"), ("/api/system", "post"), ("/api/user", "get"),
                ("/api/network", "get"), ("/api/network/{iface_id}", "put"), ("/api/target", "get"),
                ("/api/disk", "get"), ("/api/disk", "post"), ("/api/host", "get"), ("/api/host", "post"),
                ("/api/host/{host_id}", "get"), ("/api/host/{host_id}", "put"), ("/api/host/{host_id}", "post"),
                ("/api/host/{host_id}", "delete"), ("/api/volume/{vol_id}/map", "post")}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete")}
    assert expected <= documented
    for path, method in expected:
        responses = doc["paths"][path][method]["responses"]
        assert {"200", "400", "401", "403", "500"} <= set(responses)
    r = appliance.get("/api/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert appliance.get("/api/docs/static/swagger-ui-bundle.js").status_code == 200
