"""Real interfaces from the kernel; services per interface kept across restarts."""
from __future__ import annotations

import json
import subprocess


def _kernel_interfaces() -> dict[str, dict]:
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"]: link for link in json.loads(out.stdout)}


def test_interfaces_match_the_kernel(appliance):
    body = appliance.ok("GET", "/api/network")
    kernel = _kernel_interfaces()
    assert body["total"] == len(body["networks"]) == len(kernel)
    for net in body["networks"]:
        link = kernel[net["name"]]
        v4 = [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"]
        assert net["ip4_addrs"] == v4
        mac = link.get("address", "").replace(":", "")
        if net["hw_addr"]:
            assert net["hw_addr"] == mac and net["id"] == mac
        assert set(net["services"]) <= {"mgmt", "nfs", "smb", "iscsi", "repl"}
    lo = next(n for n in body["networks"] if n["name"] == "lo")
    assert lo["id"] == "lo" and lo["hw_addr"] is None and "127.0.0.1" in lo["ip4_addrs"]


def test_services_are_set_and_kept_across_restart(appliance):
    original = appliance.ok("GET", "/api/network/lo")["services"]
    try:
        updated = appliance.ok("PUT", "/api/network/lo", json={"services": ["smb", "nfs", "nfs"]})
        assert updated["services"] == ["nfs", "smb"]
        appliance.restart()
        assert appliance.ok("GET", "/api/network/lo")["services"] == ["nfs", "smb"]
        listed = {n["id"]: n for n in appliance.ok("GET", "/api/network")["networks"]}
        assert listed["lo"]["services"] == ["nfs", "smb"]

        everything = appliance.ok("PUT", "/api/network/lo", json={"services": ["all", "nfs"]})
        assert everything["services"] == ["mgmt", "nfs", "smb", "iscsi", "repl"]
        assert appliance.ok("PUT", "/api/network/lo", json={"services": []})["services"] == []
    finally:
        appliance.ok("PUT", "/api/network/lo", json={"services": original})


def test_bad_services_change_nothing(appliance):
    before = appliance.ok("GET", "/api/network/lo")["services"]
    for body in ({"services": ["nfs", "telnet"]}, {"services": "nfs"}, {}, {"services": [None]}):
        r = appliance.put("/api/network/lo", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "ValidationError"
    assert appliance.ok("GET", "/api/network/lo")["services"] == before
