"""An interface's services take effect: from a test host on its own veth pair (a network
namespace), each of mgmt (curl to the API), nfs (nfs-ls), smb (smbclient) and iscsi (iscsi-ls)
is served while the interface carries it, refused at once when it is taken away (while the
others, and everything from 127.0.0.1, still work), still refused after a restart of the
appliance and after its packet filter table was deleted behind its back (as a reboot does),
and served again once given back."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from vsnap.drivers.firewall import table_name

from .conftest import PORT, STATE, sweep_test_pools
from .zfs_tools import PREFIX, unused

NS = "vsnaptest-svc"
HOST_IF, NS_IF = "vsns0", "vsns1"
HOST_ADDR, NS_ADDR = "198.18.5.1", "198.18.5.2"  # the range set aside for such tests
IQN = "iqn.2026-11.test.vsnap:net-services"
SMB_CONF = STATE / "samba" / "smb.conf"
TABLE = table_name(STATE)
FILTERED = ("mgmt", "nfs", "smb", "iscsi")


def run(*argv, ns: str | None = None, timeout=60) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def smb_port() -> int:
    return int(re.search(r"^\s*smb ports = (\d+)", SMB_CONF.read_text(), re.M).group(1))


@pytest.fixture(scope="module")
def netns():
    """The test host: a namespace at the far end of a veth pair; removed afterwards."""
    run("ip", "netns", "del", NS)  # left by an interrupted earlier run
    run("ip", "link", "del", HOST_IF)
    steps = [("ip", "netns", "add", NS), ("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF),
             ("ip", "link", "set", NS_IF, "netns", NS), ("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", HOST_IF),
             ("ip", "link", "set", HOST_IF, "up")]
    for step in steps:
        assert run(*step).returncode == 0, step
    for step in [("ip", "addr", "add", f"{NS_ADDR}/24", "dev", NS_IF), ("ip", "link", "set", NS_IF, "up"),
                 ("ip", "link", "set", "lo", "up")]:
        assert run(*step, ns=NS).returncode == 0, step
    yield NS
    run("ip", "netns", "del", NS)
    run("ip", "link", "del", HOST_IF)


@pytest.fixture(scope="module")
def iface(appliance, netns):
    """The host side of the veth pair as the API lists it; carrying every service before and after."""
    [net] = [n for n in appliance.ok("GET", "/api/network")["networks"] if n["name"] == HOST_IF]
    assert net["ip4_addrs"] == [HOST_ADDR]
    appliance.ok("PUT", f"/api/network/{net['id']}", json={"services": ["all"]})  # an earlier run's row
    yield net["id"]
    appliance.ok("PUT", f"/api/network/{net['id']}", json={"services": ["all"]})


@pytest.fixture(scope="module")
def served(appliance, admin):
    """A pool with an NFS share, an SMB share and a LUN mapped to a host: one of each to reach.
    All of it is removed afterwards, also when making it failed half-way."""
    sweep_test_pools(appliance, machine_wide=False)  # an interrupted earlier run's
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    pool = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}svc", "pool_type": "raid0",
                                                   "disk_list": [d["uuid"] for d in unused(appliance, 1)]})

    def remove_hosts():
        for h in appliance.ok("GET", "/api/host")["hosts"]:
            if h["name"] == "svc-host":
                appliance.delete(f"/api/host/{h['id']}")

    try:
        remove_hosts()
        nfs_vol = appliance.ok("POST", "/api/volume", json={"name": "svcnfs", "volume_type": "filesystem",
                                                             "pool_id": pool["id"]})
        appliance.ok("POST", f"/api/volume/{nfs_vol['id']}/share", json={
            "share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1", "198.18.5.0/24"]}})
        smb_vol = appliance.ok("POST", "/api/volume", json={"name": "svcsmb", "volume_type": "filesystem",
                                                             "pool_id": pool["id"]})
        smb_share = appliance.ok("POST", f"/api/volume/{smb_vol['id']}/share", json={"share_type": "smb"})
        appliance.ok("GET", "/api/system")  # the account's API login gives Samba its password
        lun = appliance.ok("POST", "/api/volume", json={"name": "svclun", "volume_type": "lun",
                                                         "pool_id": pool["id"], "size_total": 64 << 20})
        host = appliance.ok("POST", "/api/host", json={"name": "svc-host", "iqns": [IQN]})
        appliance.ok("POST", f"/api/host/{host['id']}", json={"action": "map", "vol_id": lun["id"]})
        yield {"nfs_path": f"/vsnap/{pool['name']}/svcnfs", "smb_share": smb_share["name"], "admin": admin}
    finally:
        remove_hosts()
        for v in appliance.ok("GET", "/api/volume", params={"pool_id": pool["id"]})["volumes"]:
            appliance.delete(f"/api/volume/{v['id']}")
        appliance.delete(f"/api/pool/{pool['id']}")


# -- one probe per service, with its real client ----------------------------------------------

def probe(service: str, appliance, served, addr: str, ns: str | None) -> bool:
    """Whether `service` answers at `addr` (from the namespace when `ns`)."""
    if service == "mgmt":
        # The certificate names localhost: curl is told that localhost is `addr`.
        r = run("curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                "--cacert", appliance.cert, "--connect-to", f"localhost:{PORT}:{addr}:{PORT}",
                "-u", f"{served['admin'].name}:{served['admin'].password}",
                f"https://localhost:{PORT}/api/system", ns=ns)
        return r.returncode == 0 and r.stdout == "200"
    if service == "nfs":
        return run("nfs-ls", f"nfs://{addr}{served['nfs_path']}", ns=ns).returncode == 0
    if service == "smb":
        admin = served["admin"]
        r = run("smbclient", "-s", str(SMB_CONF), "-p", str(smb_port()), "-t", "10",
                f"//{addr}/{served['smb_share']}", "-U", f"{admin.name}%{admin.password}", "-c", "ls", ns=ns)
        return r.returncode == 0
    if service == "iscsi":
        r = run("iscsi-ls", "-i", IQN, f"iscsi://{addr}:3260", ns=ns)
        return r.returncode == 0 and "Target:" in r.stdout
    raise ValueError(service)


def state(appliance, served) -> dict[str, bool]:
    """{service: served from the namespace} for the reachable services."""
    return {s: probe(s, appliance, served, HOST_ADDR, NS) for s in FILTERED}


def assert_local_all_served(appliance, served):
    for service in FILTERED:
        assert probe(service, appliance, served, "127.0.0.1", None), f"{service} from 127.0.0.1"


def set_services(appliance, iface, services) -> dict:
    return appliance.ok("PUT", f"/api/network/{iface}", json={"services": services})


def table_present() -> bool:
    return run("nft", "list", "table", "inet", TABLE).returncode == 0


@pytest.fixture(scope="module")
def ready(appliance, iface, served):
    if run("nft", "list", "tables").returncode != 0:
        pytest.fail("nft is not usable on this machine (install nftables)")
    # Every interface serves everything to begin with (an interrupted earlier run may have
    # left one restricted in the appliance's database, and with it the table in the kernel).
    for network in appliance.ok("GET", "/api/network")["networks"]:
        if network["name"] != "lo" and set(network["services"]) != {"mgmt", "nfs", "smb", "iscsi", "repl"}:
            set_services(appliance, network["id"], ["all"])
    assert state(appliance, served) == {s: True for s in FILTERED}, "not served before any change"
    assert_local_all_served(appliance, served)
    return iface


@pytest.mark.guest
@pytest.mark.parametrize("service", FILTERED)
def test_a_removed_service_is_refused_on_that_interface_only(appliance, served, ready, service):
    rest = [s for s in ("mgmt", "nfs", "smb", "iscsi", "repl") if s != service]
    try:
        assert set_services(appliance, ready, rest)["services"] == rest
        started = time.monotonic()
        assert not probe(service, appliance, served, HOST_ADDR, NS), f"{service} still served"
        assert time.monotonic() - started < 15, "refused, but only after a timeout"
        assert state(appliance, served) == {s: s != service for s in FILTERED}
        assert_local_all_served(appliance, served)
        assert appliance.ok("GET", f"/api/network/{ready}")["services"] == rest
    finally:
        set_services(appliance, ready, ["all"])
    assert state(appliance, served) == {s: True for s in FILTERED}


@pytest.mark.guest
def test_restriction_holds_across_restart_and_a_lost_table(appliance, served, ready):
    try:
        assert set_services(appliance, ready, ["repl"])["services"] == ["repl"]
        assert state(appliance, served) == {s: False for s in FILTERED}
        assert_local_all_served(appliance, served)
        assert table_present()

        # The table is deleted behind the appliance's back: its worker puts it back.
        assert run("nft", "delete", "table", "inet", TABLE).returncode == 0
        deadline = time.monotonic() + 30
        while not table_present() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert table_present(), "the worker did not put the table back"
        assert state(appliance, served) == {s: False for s in FILTERED}

        # A reboot: the appliance stops, its table is gone, it starts again.
        appliance.stop()
        assert run("nft", "delete", "table", "inet", TABLE).returncode == 0
        appliance.start()
        assert table_present()
        assert appliance.ok("GET", f"/api/network/{ready}")["services"] == ["repl"]
        assert state(appliance, served) == {s: False for s in FILTERED}
        assert_local_all_served(appliance, served)

        # Given back: all served again at once, and the table is gone.
        assert set_services(appliance, ready, ["all"])["services"] == ["mgmt", "nfs", "smb", "iscsi", "repl"]
        assert state(appliance, served) == {s: True for s in FILTERED}
        assert not table_present()
    finally:
        set_services(appliance, ready, ["all"])


@pytest.mark.guest
def test_an_established_api_connection_is_not_cut(appliance, served, ready):
    """The admin removes mgmt from the interface they are connected over: the answer comes back
    on that very connection; only new connections are refused."""
    admin = served["admin"]
    body = json.dumps({"services": ["nfs", "smb", "iscsi", "repl"]})
    url = f"https://localhost:{PORT}/api/network/{ready}"
    try:
        # One curl, one connection (keep-alive), two requests: the PUT, then a GET after it.
        r = run("curl", "-sS", "--max-time", "20", "--cacert", appliance.cert,
                "--connect-to", f"localhost:{PORT}:{HOST_ADDR}:{PORT}", "-u", f"{admin.name}:{admin.password}",
                "-H", "Content-Type: application/json", "-X", "PUT", "-d", body, "-w", "\n%{http_code}\n",
                url, "--next", "--cacert", appliance.cert, "--connect-to", f"localhost:{PORT}:{HOST_ADDR}:{PORT}",
                "-u", f"{admin.name}:{admin.password}", "-w", "\n%{http_code} %{num_connects}\n", url, ns=NS)
        assert r.returncode == 0, r.stderr
        answers = re.findall(r'"services":\s*\[\s*"nfs",\s*"smb",\s*"iscsi",\s*"repl"\s*\]', r.stdout)
        assert len(answers) == 2, r.stdout
        assert r.stdout.rstrip().endswith("200 0"), r.stdout  # the GET reused the connection
        assert not probe("mgmt", appliance, served, HOST_ADDR, NS)
    finally:
        set_services(appliance, ready, ["all"])
    assert probe("mgmt", appliance, served, HOST_ADDR, NS)


@pytest.mark.guest
def test_filter_file_is_the_table(appliance, ready):
    """What was applied is kept in the state directory for people to read."""
    set_services(appliance, ready, ["mgmt", "repl"])
    try:
        text = (Path(STATE) / "network-filter.nft").read_text()
        assert f'iifname "{HOST_IF}" tcp dport {{ 3260 }}' in text and HOST_ADDR in text
    finally:
        set_services(appliance, ready, ["all"])
    assert (Path(STATE) / "network-filter.nft").read_text() == f"table inet {TABLE}\ndelete table inet {TABLE}\n"
