"""The README's walk-through, run as written, so that it can never drift from the product.

Every ```sh block of the README that follows the marker line MARK (the blocks of "A first
session", "Pools", the volumes, shares, iSCSI and replication sections) runs, in order, in ONE
`bash -euo pipefail`, against a fresh appliance of this test's own (made here: lab disks,
bootstrap, server; nothing of it is left afterwards), with the partner appliance the
replication block asks for made the same way. The README's curl commands fail on an error
answer themselves (`--fail-with-body` in its AUTH), so every command must succeed; afterwards
the effects are checked with ZFS's, Samba's and the API's own eyes.

The suite's test appliance (/var/lib/vsnap-test) cannot serve: other tests leave it with
pools, and the README's first init makes the default pool from every unused disk. So this
test has two appliances of its own (states READMEA and READMEB, ports below), each with its
own lab disks, sshd and smbd (`lab/lab.sh up`), bootstrapped without the admin account.

What the test changes in the README's text, and only that (each must be found):
- `PASS=...` and the partner's `REMOTE_...=` line: this test's account and partner;
- the API address (port 8900 -> this appliance's), `vsnapadmin` -> this test's OS account
  (the machine's vsnapadmin belongs to `make run`'s appliance);
- the pool names backup1/backup2 -> PREFIX names (ZFS pool names are machine-wide, and a
  `make run` appliance that followed the README has them already; the suite's sweeps know
  PREFIX);
- `smbclient` -> `smbclient -p <this appliance's smbd port>` (smbclient takes the port from
  -p only; `make run`'s smbd is on 445).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vsnap.config import Settings

from .appliance import ROOT, Appliance
from .conftest import ACCOUNT_PREFIX, GROUP, OsAccount
from .zfs_tools import PREFIX, destroy_pool, layout, pool_names

README = ROOT / "README.md"
MARK = "<!-- walk-through: run in order by tests/integration/test_readme.py -->"
# The sections whose ```sh blocks are the walk-through, in README order (headings' starts).
SECTIONS = ["A first session", "Pools", "Backup and restore with volumes", "Shares:", "iSCSI:",
            "Replication to a partner appliance"]
POOLS = {"backup1": f"{PREFIX}readme1", "backup2": f"{PREFIX}readme2"}
RUN_TIMEOUT = 900


@dataclass
class Side:
    state: Path
    port: int
    ssh_port: int
    smb_port: int
    disks: int

    @property
    def lab_env(self) -> dict[str, str]:
        return {**os.environ, "VSNAP_STATE": str(self.state), "VSNAP_SSH_PORT": str(self.ssh_port),
                "VSNAP_LAB_SMB_PORT": str(self.smb_port), "VSNAP_LAB_DISKS": str(self.disks),
                "VSNAP_LAB_DISK_SIZE": "1G", "VSNAP_PORT": str(self.port)}


_STATE = os.environ.get("VSNAP_README_STATE", "/var/lib/vsnap-test-readme")
READMEA = Side(Path(_STATE), 8965, 8967, 4475, 8)      # a fresh `make run` appliance: 8 x 1 GiB
READMEB = Side(Path(_STATE + "-b"), 8975, 8977, 4476, 3)  # the partner (as make test's: 3 disks)


# -- the README's walk-through ------------------------------------------------------------------
def walkthrough(text: str) -> list[tuple[str, str]]:
    """[(section heading, block text)] of the marked ```sh blocks, in order. A marker must be
    followed by a ```sh block, and every ```sh block of the walk-through's sections must be
    marked (a new block there is run too, or deliberately left out of those sections)."""
    blocks, heading, lines, i = [], "", text.splitlines(), 0
    marked = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = lines.index("```", i + 1)
            if line == "```sh" and any(heading.startswith(s) for s in SECTIONS):
                assert marked, f"README: an unmarked ```sh block in section {heading!r} (line {i + 1})"
            if marked:
                assert line == "```sh", f"README line {i + 1}: {MARK} must precede a ```sh block"
                blocks.append((heading, "\n".join(lines[i + 1:end]) + "\n"))
            marked, i = False, end + 1
            continue
        if line.strip() == MARK:
            marked = True
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
            assert not marked, f"README line {i + 1}: {MARK} must precede a ```sh block"
        i += 1
    return blocks


def substitute(script: str, pattern: str, replacement: str, *, flags=0) -> str:
    new, count = re.subn(pattern, lambda _: replacement, script, flags=flags)
    assert count, f"the README's walk-through no longer has {pattern!r}: update test_readme.py"
    return new


def script_for(text: str, account: OsAccount, smb_port: int, partner: tuple[str, int]) -> str:
    blocks = walkthrough(text)
    headings = [h for h, _ in blocks]
    assert len(blocks) == len(SECTIONS) and all(h.startswith(s) for h, s in zip(headings, SECTIONS)), \
        f"the README's walk-through blocks are in sections {headings}, not {SECTIONS}"
    script = "".join(f"\n# ---- README: {h}\n{b}" for h, b in blocks)
    script = substitute(script, r"^PASS=\.\.\..*$", f"PASS='{account.password}'", flags=re.M)
    script = substitute(script, r"^REMOTE_ADDR=.*$",
                        f"REMOTE_ADDR={partner[0]} REMOTE_PORT={partner[1]} REMOTE_USER={account.name} "
                        f"REMOTE_PASS='{account.password}'", flags=re.M)
    script = substitute(script, re.escape("https://127.0.0.1:8900"), f"https://127.0.0.1:{READMEA.port}")
    script = substitute(script, r"\bvsnapadmin\b", account.name)
    for name, ours in POOLS.items():
        script = substitute(script, rf"\b{name}\b", ours)
    return substitute(script, r"\bsmbclient ", f"smbclient -p {smb_port} ")


# -- the appliances -----------------------------------------------------------------------------
def run(argv, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, \
            f"{' '.join(map(str, argv))}: rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def system_id(side: Side) -> str | None:
    path = Settings.from_env({"VSNAP_STATE": str(side.state)}).system_id_file
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def remove(side: Side, server: Appliance | None) -> None:
    """Everything the side made, whatever state a run left it in: its objects through the API
    (while its server runs); then its tgt targets, its lab (sshd and smbd stopped, its NFS
    exports dropped, the pools on its disks exported, its disks detached: machine-wide services
    stay while other labs use them), any pool of its still imported, and its state."""
    if server is not None and server.proc is not None:
        for kind, suffix in (("hosts", ""), ("relationships", "?preserve_replica=true"), ("partners", ""),
                             ("pools", "")):
            answer = server.get(f"/api/{kind[:-1]}")
            for item in answer.json().get(kind, []) if answer.status_code == 200 else []:
                server.delete(f"/api/{kind[:-1]}/{item['id']}{suffix}")
        server.stop()
    ident = system_id(side)
    if ident and shutil.which("tgtadm"):
        shown = run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"], check=False).stdout
        for tid in re.findall(rf"^Target (\d+): \S*{ident}\S*$", shown, re.M):
            run(["tgtadm", "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", tid, "--force"],
                check=False)
    if (side.state / "lab").exists():
        run([ROOT / "lab" / "lab.sh", "down"], env=side.lab_env)
    for pool in pool_names() if ident else ():
        stamp = run(["zfs", "get", "-H", "-o", "value", "com.vsnap:system", pool], check=False).stdout.strip()
        if stamp == ident:
            destroy_pool(pool)
    shutil.rmtree(side.state, ignore_errors=True)


def make(side: Side, account: OsAccount | None, log_name: str) -> Appliance:
    run([ROOT / "lab" / "lab.sh", "up"], env=side.lab_env)
    run([sys.executable, "-m", "vsnap.bootstrap", "--no-account"], env=side.lab_env)
    server = Appliance(side.state, side.port, ssh_port=side.ssh_port, log_name=log_name).start()
    server.account = account
    return server


@pytest.fixture(scope="module")
def readme_pair():
    """Two fresh appliances (A for the walk-through, B its partner, initialised with its default
    pool as the partner site's admin would have it), removed afterwards, and this test's OS
    account in group vsnap (the README's vsnapadmin)."""
    for side in (READMEB, READMEA):
        remove(side, None)  # left by an interrupted earlier run
    servers: dict[str, Appliance] = {}
    account = None
    try:
        a = servers["a"] = make(READMEA, None, "server-readme")
        account = OsAccount(f"{ACCOUNT_PREFIX}-readme", [GROUP])  # the group: made by the bootstrap
        a.account = account
        b = servers["b"] = make(READMEB, account, "server-readme-b")
        b.ok("POST", "/api/system", json={"action": "init"}, timeout=600)
        assert b.ok("GET", "/api/system")["init_status"] == "Ready"
        yield a, b, account
    finally:
        try:
            remove(READMEA, servers.get("a"))
        finally:
            try:
                remove(READMEB, servers.get("b"))
            finally:
                if account is not None:
                    account.remove()


# -- the test ---------------------------------------------------------------------------------
def test_walkthrough_parses():
    """The walk-through's blocks are where the README's sections say, each marked."""
    blocks = walkthrough(README.read_text())
    assert [h for h, _ in blocks] and all(h.startswith(s) for (h, _), s in zip(blocks, SECTIONS, strict=True))


def test_readme_runs_as_written(readme_pair, tmp_path):
    a, b, account = readme_pair
    script = script_for(README.read_text(), account, READMEA.smb_port, ("127.0.0.1", READMEB.port))
    path = tmp_path / "walkthrough.sh"
    path.write_text(script)
    # A clean environment: nothing of the test's own (API, AUTH, VSNAP_*) leaks in.
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/root", "LC_ALL": "C"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-x", str(path)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, (f"the README's walk-through failed (rc {result.returncode}); "
                                    f"script {path}\n--- stdout\n{result.stdout[-6000:]}\n"
                                    f"--- stderr (bash -x)\n{result.stderr[-8000:]}\n--- server log\n{a.log_tail()}")

    # Pools: the default pool was deleted; the README's pool, as built, under its new name.
    pool_name = POOLS["backup2"]
    [pool] = a.ok("GET", "/api/pool")["pools"]
    assert pool["name"] == pool_name
    assert a.ok("GET", f"/api/pool/{pool['id']}")["deduplication"] is True
    groups = layout(pool_name)
    assert sorted(len(devs) for name, devs in groups.items() if name.startswith("data:")) == [3, 3], groups
    assert sum(name.startswith("logs:") for name in groups) == 1, groups
    assert sum(name.startswith("spares:") for name in groups) == 1, groups

    # Volumes: what the README made and did not delete, by name and type.
    volumes = {v["name"]: v for v in a.ok("GET", "/api/volume")["volumes"]}
    assert {n: v["volume_type"] for n, v in volumes.items()} == {
        "vm_backups2": "filesystem", "db_lun": "lun", "vm_disk": "filebackedlun", "sql_dumps": "filesystem",
        "restore_2": "filesystem", "vmdisk": "lun", "vmdisk_restore": "lun"}
    assert volumes["vm_backups2"]["size_total"] == str(3 << 30)
    image = f"/vsnap/{pool_name}/vm_backups2/vm1/disk0.img"  # vm_disk's file, under the renamed volume
    assert os.path.getsize(image) == 1 << 30
    assert a.ok("GET", "/api/volume", params={"name": "vm_disk"})["parent_path"] == "vm1/disk0.img"

    # Shares: the SMB share still served (smbclient, as its user); the clone's NFS share as asked.
    shares = {s["vol_id"]: s for s in a.ok("GET", "/api/share")["shares"]}
    assert set(shares) == {volumes["sql_dumps"]["id"], volumes["restore_2"]["id"]}
    assert shares[volumes["sql_dumps"]["id"]]["name"] == f"{pool_name}_sql_dumps"
    smb = run(["smbclient", "-p", READMEA.smb_port, f"//127.0.0.1/{pool_name}_sql_dumps",
               "-U", f"{account.name}%{account.password}", "-c", "ls"], check=False, timeout=60)
    assert smb.returncode == 0, smb.stdout + smb.stderr
    restore = a.ok("GET", f"/api/share/{shares[volumes['restore_2']['id']]['id']}")
    assert restore["share_options"] == {"read_only": True, "allowed_hosts": ["10.0.0.7"]}

    # iSCSI: the host is gone (its LUNs unmapped).
    assert a.ok("GET", "/api/host")["hosts"] == []

    # Replication: the relationship is gone on both sides, the replica kept on the partner with
    # the snapshot under the name asked for (read from ZFS).
    assert a.ok("GET", "/api/relationship")["relationships"] == []
    [b_pool] = b.ok("GET", "/api/pool")["pools"]
    snapshots = run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", b_pool["name"]]).stdout.split()
    assert f"{b_pool['name']}/vm_backups2_replica@nightly-2026-11-26" in snapshots, snapshots
    assert "vm_backups2_replica" in {v["name"] for v in b.ok("GET", "/api/volume")["volumes"]}
