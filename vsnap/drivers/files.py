"""Configuration files the appliance owns, replaced whole and atomically: a reader (a server
rereading its configuration, a crash in the middle) sees the old file or the new one, never a mix."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Writes `text` to a temporary file beside `path`, syncs it, and renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, text.encode(), mode)


def write_secret_atomically(path: Path, data: bytes) -> None:
    """Writes a secret as write_atomically does, readable by its owner only from the first byte
    (mkstemp makes the file 0600), in a directory only its owner may enter (0700); the rename
    itself is synced, so it survives a crash."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _replace(path, data, 0o600)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
