"""OpenSSH for replication: the appliance's own key pair, the partner keys its sshd accepts
(each forced onto the replication command, nothing else), the partner host keys it pins, and
the argument lists that reach a partner.

Partner keys live in the authorized_keys file the appliance's sshd reads; each line we write
ends with the comment `vsnap-partner:<id>`, and lines without it are never touched. Pinned
host keys live in the appliance's own known_hosts under the alias `vsnap-partner-<id>`, so a
partner is recognised whichever of its addresses carries the data.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from .files import write_atomically
from .runner import Runner

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_PUBLIC_KEY = re.compile(r"(?P<type>[a-z0-9-]+) (?P<blob>[A-Za-z0-9+/]+={0,3})")
_PARTNER_ID = re.compile(r"[0-9a-f]{32}")
CIPHER = "aes128-gcm@openssh.com"  # AES-NI makes it the fastest of OpenSSH's ciphers here


def normalize_public_key(text: object) -> str:
    """`<type> <base64>` of an OpenSSH public key, comment dropped. Anything else is refused:
    these keys are written into authorized_keys and known_hosts, where a newline or an option
    would be an injection."""
    if not isinstance(text, str):
        raise ValueError("not an SSH public key")
    parts = text.strip().split()
    m = _PUBLIC_KEY.fullmatch(" ".join(parts[:2])) if len(parts) >= 2 else None
    if m is None or m.group("type") not in KEY_TYPES or len(text) > 16384:
        raise ValueError("not an OpenSSH public key of a supported type")
    return f"{m.group('type')} {m.group('blob')}"


def _check_partner_id(partner_id: str) -> str:
    if not isinstance(partner_id, str) or not _PARTNER_ID.fullmatch(partner_id):
        raise ValueError("partner ids are 32 lower-case hex characters")
    return partner_id


def _private_dir(path: Path) -> None:
    """The directory of our keys: root's alone, even when something else (the lab, an older
    release) made it with the default 0755."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    _private_dir(path.parent)
    write_atomically(path, text, 0o600)


class SshDriver:
    def __init__(self, runner: Runner, ssh_dir: Path, host_key_files: list[Path], user: str = "root",
                 connect_timeout: int = 10):
        self.runner = runner
        self.ssh_dir = ssh_dir
        self.host_key_files = host_key_files
        self.user = user
        self.connect_timeout = connect_timeout

    @property
    def key_path(self) -> Path:
        return self.ssh_dir / "repl_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    # -- our keys -----------------------------------------------------------------------------
    def public_key(self) -> str:
        """The replication key's public half, made on first use."""
        _private_dir(self.ssh_dir)
        if not self.key_path.exists():
            self.runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vsnap-replication",
                             "-f", str(self.key_path)])
        return normalize_public_key(Path(f"{self.key_path}.pub").read_text())

    def host_key(self) -> str:
        """The public host key of the sshd partners connect to."""
        for path in self.host_key_files:
            if path.exists():
                return normalize_public_key(path.read_text())
        raise FileNotFoundError("no SSH host key found (looked at: "
                                + ", ".join(str(p) for p in self.host_key_files) + ")")

    # -- partners' keys -------------------------------------------------------------------------
    def _lines_without(self, path: Path, partner_id: str) -> list[str]:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        mark = f"vsnap-partner:{partner_id}"
        return [line for line in lines if not line.rstrip().endswith(mark)
                and not line.startswith(f"vsnap-partner-{partner_id} ")]

    def authorize(self, partner_id: str, public_key: str, command: list[str]) -> None:
        """Lets the partner's key in, restricted to `command` (no shell, pty or forwarding)."""
        _check_partner_id(partner_id)
        key = normalize_public_key(public_key)
        # sshd unescapes only \" inside command="..." (auth-options.c, opt_dequote)
        forced = " ".join(shlex.quote(part) for part in command).replace('"', '\\"')
        line = f'restrict,command="{forced}" {key} vsnap-partner:{partner_id}'
        lines = self._lines_without(self.authorized_keys, partner_id) + [line]
        _write_private(self.authorized_keys, "\n".join(lines) + "\n")

    def deauthorize(self, partner_id: str) -> None:
        _check_partner_id(partner_id)
        if self.authorized_keys.exists():
            lines = self._lines_without(self.authorized_keys, partner_id)
            _write_private(self.authorized_keys, "".join(f"{line}\n" for line in lines))

    def is_authorized(self, partner_id: str) -> bool:
        try:
            return any(line.rstrip().endswith(f"vsnap-partner:{_check_partner_id(partner_id)}")
                       for line in self.authorized_keys.read_text().splitlines())
        except FileNotFoundError:
            return False

    def pin_host_key(self, partner_id: str, host_key: str) -> None:
        _check_partner_id(partner_id)
        line = f"vsnap-partner-{partner_id} {normalize_public_key(host_key)}"
        lines = self._lines_without(self.known_hosts, partner_id) + [line]
        _write_private(self.known_hosts, "\n".join(lines) + "\n")

    def unpin_host_key(self, partner_id: str) -> None:
        _check_partner_id(partner_id)
        if self.known_hosts.exists():
            lines = self._lines_without(self.known_hosts, partner_id)
            _write_private(self.known_hosts, "".join(f"{line}\n" for line in lines))

    # -- reaching a partner ---------------------------------------------------------------------
    def command(self, partner_id: str, address: str, port: int, remote: list[str]) -> list[str]:
        """The ssh argument list that runs `remote` (words the partner's forced command reads
        from SSH_ORIGINAL_COMMAND) on a partner, its host key checked against the pinned one."""
        _check_partner_id(partner_id)
        return ["ssh", "-T", "-i", str(self.key_path), "-p", str(int(port)), "-c", CIPHER,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"HostKeyAlias=vsnap-partner-{partner_id}", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", "-o", "Compression=no",
                "-o", "LogLevel=ERROR", "--", f"{self.user}@{address}", *remote]
