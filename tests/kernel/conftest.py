"""The kernel lab's fixtures: the production stack in a Debian guest under QEMU (OpenZFS, LIO,
the kernel NFS server, systemd, nginx), with this tree installed by `make install` inside it
(lab/kernel-lab.sh). Its API, SSH, iSCSI and NFS ports are forwarded to the host's loopback,
and the host's real clients (iscsi-inq, iscsi-ls, nfs-ls, smbclient) talk to it there."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab" / "kernel-lab.sh"
KLAB = Path(os.environ.get("VSNAP_KERNEL_LAB", "/var/lib/vsnap-kernel-lab"))
API_PORT = int(os.environ.get("KLAB_API_PORT", "8990"))
ISCSI_PORT = int(os.environ.get("KLAB_ISCSI_PORT", "8992"))
NFS_PORT = int(os.environ.get("KLAB_NFS_PORT", "8993"))
SMB_PORT = int(os.environ.get("KLAB_SMB_PORT", "8994"))
GATEWAY = "198.18.64.2"  # the host, as the guest sees it (QEMU's user-mode network)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


class Guest:
    """The guest appliance: its API (through nginx, TLS, on the forwarded port) and a root
    shell over SSH for what the tests check with the system's own tools."""

    def __init__(self):
        self.base = f"https://127.0.0.1:{API_PORT}"
        self.auth = ("vsnapadmin", (KLAB / "admin.password").read_text().strip())
        self.http = requests.Session()
        # The guest's own certificate, as its clients pin it (read over SSH, not trusted blindly).
        self.cert = KLAB / "run" / "guest.crt"
        self.cert.write_text(self.sh("cat /var/lib/vsnap/tls/vsnap.crt").stdout)

    def sh(self, command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run([str(LAB), "ssh", command], capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{command}: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
        return out

    def request(self, method: str, path: str, *, auth=..., **kw) -> requests.Response:
        kw.setdefault("timeout", 300)  # TCG: a guest's zpool create takes seconds
        # verify per request: a session's own is overridden by REQUESTS_CA_BUNDLE.
        return self.http.request(method, self.base + path, verify=str(self.cert),
                                 auth=self.auth if auth is ... else auth, **kw)

    def ok(self, method: str, path: str, **kw) -> dict:
        r = self.request(method, path, **kw)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def wait_answering(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/api/system", timeout=10).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the guest's API did not answer"
            time.sleep(2)


@pytest.fixture(scope="session")
def guest():
    """Builds the image if needed (cached per package list), boots the guest and installs
    this tree; stops the guest (by pid) afterwards. A machine that cannot build or boot it
    fails here with the reason: never a skip."""
    up = subprocess.run([str(LAB), "up"], capture_output=True, text=True, timeout=3600)
    assert up.returncode == 0, f"the kernel lab did not come up:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    g = Guest()
    try:
        g.wait_answering()
        yield g
    finally:
        subprocess.run([str(LAB), "down"], capture_output=True, text=True, timeout=300)
