"""Wrapping keys of encrypted pools: 32 random bytes (ZFS keyformat=raw) in a file each, under
the state directory's keys/ (0700, files 0600: root only). ZFS reads a key from its dataset's
keylocation (file://<path>); the appliance never puts a key's bytes in an argument, a log, the
database or an answer."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .files import write_secret_atomically

KEY_BYTES = 32  # aes-256-gcm, keyformat=raw
CIPHER = "aes-256-gcm"


class KeyFiles:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "keys"

    def new_path(self, prefix: str) -> Path:
        """A path no key has: `<prefix>-<random>.key` (a lost database that numbers pools
        from 1 again never points a new pool at the key of an exported one)."""
        return self.dir / f"{prefix}-{secrets.token_hex(8)}.key"

    @staticmethod
    def location(path: Path) -> str:
        return f"file://{path}"

    def path_of(self, location: str | None) -> Path | None:
        """The key file a keylocation names, when it is one of ours (under keys/), else None."""
        if not location or not location.startswith("file://"):
            return None
        path = Path(location.removeprefix("file://"))
        return path if path.parent == self.dir and path.name.endswith(".key") else None

    def create(self, path: Path) -> None:
        """A new random key at `path` (never over an existing one)."""
        if path.exists():
            raise FileExistsError(f"{path} exists")
        write_secret_atomically(path, secrets.token_bytes(KEY_BYTES))

    def write(self, path: Path, key: bytes) -> None:
        """A key given (imported from a partner), checked to be one ZFS takes."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes; this one has {len(key)}")
        write_secret_atomically(path, key)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def remove(self, path: Path | None) -> bool:
        if path is None or path.parent != self.dir:
            return False
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
