"""The installed `vsnap` console script against the real server: --json shows what the API
answers, tables have their headers, objects made and deleted through the command exist (or
not) in the API and in ZFS, and errors exit non-zero with the API's message."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .zfs_tools import PREFIX, pool_names, unused, zfs_get

VSNAP = Path(sys.executable).with_name("vsnap")
CLI_IQN = "iqn.2026-11.test.vsnap:cli-host"


@pytest.fixture(scope="module")
def vsnap(appliance, admin, tmp_path_factory):
    """Runs the console script as an admin would: URL, CA and user as flags, the password in
    VSNAP_PASSWORD, and an empty config file of its own (not /etc/vsnap/cli.conf)."""
    if not VSNAP.exists():
        pytest.fail(f"{VSNAP} is missing: the package is not installed with its console script "
                    "(`make test` reinstalls it when pyproject.toml changes)")
    config = tmp_path_factory.mktemp("cli") / "empty.conf"
    config.write_text("[vsnap]\n")
    config.chmod(0o600)

    def run(*args, flags=True, env=None, check=True):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VSNAP_")}
        environ.update(VSNAP_PASSWORD=admin.password, VSNAP_CLI_CONFIG=str(config))
        environ.update(env or {})
        argv = [str(VSNAP)]
        if flags:
            argv += ["--url", appliance.base, "--ca", appliance.cert, "-u", admin.name]
        result = subprocess.run(argv + list(args), capture_output=True, text=True, env=environ,
                                timeout=300, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, f"vsnap {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result

    def json_of(*args):
        return json.loads(run("--json", *args).stdout)

    run.json = json_of
    return run


SHOWS = [("system", "/api/system"), ("disk", "/api/disk"), ("pool", "/api/pool"), ("volume", "/api/volume"),
         ("snapshot", "/api/snapshot"), ("share", "/api/share"), ("host", "/api/host"),
         ("partner", "/api/partner"), ("relationship", "/api/relationship"), ("session", "/api/session"),
         ("user", "/api/user"), ("network", "/api/network"), ("target", "/api/target")]


@pytest.mark.parametrize("resource,path", SHOWS, ids=[s[0] for s in SHOWS])
def test_json_show_is_the_api_answer(vsnap, appliance, resource, path):
    before = appliance.ok("GET", path)
    shown = vsnap.json(resource, "show")
    after = appliance.ok("GET", path)
    assert shown in (before, after)  # a size may move between the calls; then the next one agrees


def test_system_stats_and_audit_json(vsnap, appliance):
    stats = vsnap.json("system", "stats")
    api = appliance.ok("GET", "/api/system/stats")
    assert set(stats) == set(api) == {"size_arc_max", "size_arc_used", "size_ddt_core", "size_ddt_disk",
                                      "size_zfs_arc_meta_max", "size_zfs_arc_meta_used"}
    assert all(v is None or isinstance(v, str) for v in stats.values())
    audit = vsnap.json("audit", "show", "--limit", "3")
    api = appliance.ok("GET", "/api/audit", params={"limit": 3})
    assert set(audit) == set(api) == {"events", "total"} and len(audit["events"]) <= 3
    for event in audit["events"]:
        assert {"id", "time", "user", "address", "method", "path", "status", "message", "request_id"} <= set(event)


TABLES = {"pool": "ID NAME TYPE STATUS HEALTH SIZE USED FREE SCAN",
          "disk": "NAME UUID SIZE USED_AS POOL TYPE VENDOR MODEL",
          "volume": "ID NAME TYPE POOL_ID CLONE SIZE USED FREE CREATED", "host": "ID NAME IQNS CREATED",
          "user": "NAME UID GID ROLE", "network": "ID NAME HW_ADDR IPV4 IPV6 SERVICES", "target": "TYPE WWN HOST_ID",
          "audit": "ID TIME USER ADDRESS METHOD PATH STATUS MESSAGE REQUEST_ID"}


def test_tables_for_people(vsnap, appliance, admin):
    for resource, headers in TABLES.items():
        lines = vsnap(resource, "show").stdout.splitlines()
        assert lines[0].split() == headers.split(), resource
    users = vsnap("user", "show").stdout.splitlines()[1:]
    assert admin.name in [line.split()[0] for line in users]
    assert "init_status:" in vsnap("system", "show").stdout


def test_init_wait(vsnap, appliance):
    result = vsnap("system", "init", "--skip-pool", "--multipool", "--wait")
    assert "init: Ready" in result.stderr and "init_status:" in result.stdout
    assert appliance.ok("GET", "/api/system")["init_status"] == "Ready"
    # Without --multipool / --no-multipool the setting stays as it is.
    vsnap("system", "init", "--skip-pool")
    assert appliance.ok("GET", "/api/system")["multipool"] is True
    vsnap("system", "init", "--skip-pool", "--no-multipool")
    assert appliance.ok("GET", "/api/system")["multipool"] is False
    vsnap("system", "init", "--skip-pool")
    assert appliance.ok("GET", "/api/system")["multipool"] is False
    vsnap("system", "init", "--skip-pool", "--multipool")


def zfs_list(*args) -> set[str]:
    return set(subprocess.run(["zfs", "list", "-H", "-o", "name", *args], capture_output=True, text=True,
                              check=True, timeout=60).stdout.split())


def test_make_and_delete_a_pool_volume_snapshot_and_host(vsnap, appliance, pools):
    disks = unused(appliance, 2)
    name = f"{PREFIX}cli"
    host_id = None
    try:
        # One disk by uuid, one by device path (looked up by the command).
        pool = vsnap.json("pool", "create", name, "--type", "raid0", "--disk", disks[0]["uuid"],
                          "--disk", disks[1]["name"], "--no-dedup")
        api_pool = appliance.ok("GET", f"/api/pool/{pool['id']}")
        assert (api_pool["name"], api_pool["pool_type"], api_pool["disks"]) == (name, "raid0", pool["disks"])
        assert name in pool_names() and sum(len(v) for v in pool["disks"].values()) == 2
        assert pool["deduplication"] is False
        details = vsnap("pool", "show", "--name", name).stdout
        assert "\nname:" in details and name in details
        # What monitoring reads (sppmon: `vsnap --json pool show`): every pool in full.
        shown = vsnap.json("pool", "show")
        assert shown["total"] == len(shown["pools"]) == appliance.ok("GET", "/api/pool")["total"]
        [full] = [p for p in shown["pools"] if p["id"] == pool["id"]]
        api_pool = appliance.ok("GET", f"/api/pool/{pool['id']}")
        assert full["encryption"] == {"enabled": False}
        for key in ("compression", "compression_ratio", "deduplication", "deduplication_ratio", "diskgroup_size",
                    "health", "id", "name", "pool_type", "size_before_compression", "size_before_deduplication",
                    "size_total", "status"):
            assert full[key] == api_pool[key], key

        vol = vsnap.json("volume", "create", "clifs", "--pool", pool["id"], "--size", "64M")
        assert appliance.ok("GET", "/api/volume", params={"name": "clifs"})["id"] == vol["id"]
        assert f"{name}/clifs" in zfs_list("-r", name) and zfs_get(f"{name}/clifs", "quota") == str(64 << 20)

        snap = vsnap.json("snapshot", "create", "clisnap", "--volume", vol["id"])
        assert appliance.ok("GET", f"/api/snapshot/{snap['id']}")["name"] == "clisnap"
        assert f"{name}/clifs@clisnap" in zfs_list("-t", "snapshot", "-r", name)
        listed = vsnap("snapshot", "show", "--volume", vol["id"]).stdout.splitlines()
        assert listed[0].split() == ["ID", "NAME", "VOLUME_ID", "CREATED"] and "clisnap" in listed[1]

        host = vsnap.json("host", "create", "cli-host", "--iqn", CLI_IQN)
        host_id = host["id"]
        assert appliance.ok("GET", f"/api/host/{host_id}")["iqns"] == [CLI_IQN]

        # An error: the API's message and type, exit 1, nothing on stdout.
        body = {"name": "clifs", "volume_type": "filesystem", "pool_id": pool["id"]}
        api_error = appliance.post("/api/volume", json=body).json()["error"]
        again = vsnap("volume", "create", "clifs", "--pool", pool["id"], check=False)
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr == f"error: {api_error['message']} ({api_error['type']})\n"
        missing = vsnap("pool", "show", "999999", check=False)
        api_error = appliance.get("/api/pool/999999").json()["error"]
        assert missing.returncode == 1 and missing.stderr == f"error: {api_error['message']} (NotFoundError)\n"

        assert vsnap.json("host", "delete", host_id) == {}
        host_id = None
        assert vsnap("snapshot", "delete", snap["id"]).stdout.strip() == f"deleted snapshot {snap['id']}"
        assert f"{name}/clifs@clisnap" not in zfs_list("-t", "snapshot", "-r", name)
        vsnap("volume", "delete", "--name", "clifs")
        assert appliance.get(f"/api/volume/{vol['id']}").status_code == 404
        assert f"{name}/clifs" not in zfs_list("-r", name)
        vsnap("pool", "delete", "--name", name)
        assert appliance.get(f"/api/pool/{pool['id']}").status_code == 404 and name not in pool_names()
    finally:
        if host_id:
            appliance.delete(f"/api/host/{host_id}")


def test_credentials_from_a_config_file_and_exit_codes(vsnap, appliance, admin, tmp_path):
    conf = tmp_path / "cli.conf"
    conf.write_text(f"[vsnap]\nurl = {appliance.base}\nca = {appliance.cert}\nuser = {admin.name}\n"
                    f"password = {admin.password}\n")
    conf.chmod(0o600)
    env = {"VSNAP_CLI_CONFIG": str(conf), "VSNAP_PASSWORD": ""}
    assert json.loads(vsnap("--json", "system", "show", flags=False, env=env).stdout)["id"] == \
        appliance.ok("GET", "/api/system")["id"]
    conf.chmod(0o644)
    refused = vsnap("system", "show", flags=False, env=env, check=False)
    assert refused.returncode == 2 and "chmod 600" in refused.stderr

    wrong = vsnap("system", "show", env={"VSNAP_PASSWORD": "not-the-password"}, check=False)
    assert wrong.returncode == 1 and wrong.stderr.endswith("(AuthenticationError)\n")

    closed = vsnap("--url", "https://127.0.0.1:1", "system", "show", check=False)
    assert closed.returncode == 3 and "cannot connect" in closed.stderr
    if shutil.which("openssl"):
        other = tmp_path / "other.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=other", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(tmp_path / "other.key"), "-out", str(other)], check=True, capture_output=True)
        untrusted = vsnap("--ca", str(other), "system", "show", check=False)
        assert untrusted.returncode == 3 and "TLS verification" in untrusted.stderr
