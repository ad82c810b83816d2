"""`vsnap key export|import`: an encrypted pool's key, carried by hand to a partner so that a
replica of one of its volumes can be restored there (the partner never receives a key with a
stream: raw replication sends the blocks as they are stored, encrypted).

These two run on the appliance itself, as root, and read its state directory directly (no API
call: a key never crosses the API, its logs or its database). The key travels as 64 hexadecimal
characters (32 bytes, ZFS keyformat=raw); a file written here is readable by its owner only.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

KEY_HEX = re.compile(rb"\s*([0-9a-fA-F]{64})\s*")
TIMEOUT = 60


class KeyError_(Exception):
    """A refusal or failure, with the words to print; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _state_dir() -> Path:
    return Path(os.environ.get("VSNAP_STATE") or "/var/lib/vsnap")


def _zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(["zfs", *args], capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise KeyError_("zfs is not installed here") from None
    except subprocess.TimeoutExpired:
        raise KeyError_(f"zfs {args[0]} did not answer in {TIMEOUT} s") from None
    if check and out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines() or [str(out.returncode)]
        raise KeyError_(f"zfs {args[0]}: {said[0]}")
    return out


def _props(dataset: str, props: str) -> dict[str, str]:
    out = _zfs("get", "-H", "-o", "property,value", props, dataset, check=False)
    if "bad property list" in out.stderr:
        raise KeyError_("this ZFS has no native encryption (zfs-fuse): nothing here is encrypted")
    if out.returncode != 0:
        raise KeyError_(f"zfs get: {(out.stderr.strip().splitlines() or [str(out.returncode)])[0]}")
    return dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)


def _keys():
    from ..drivers.keys import KeyFiles
    return KeyFiles(_state_dir())


def _dataset(name: str) -> str:
    """`pool` or `pool/volume`, each part checked as the appliance checks names."""
    from ..errors import ValidationError
    from ..services.pools import validate_pool_name
    from ..services.volumes import validate_name
    pool, _, volume = name.partition("/")
    try:
        validate_pool_name(pool)
        if volume or name.endswith("/"):
            validate_name(volume)
    except ValidationError as exc:
        raise KeyError_(f"{name!r}: {exc.message}", 2) from None
    return name


def _need_root() -> None:
    if os.geteuid() != 0:
        raise KeyError_("this command runs as root only, on the appliance (it reads and writes the "
                        "appliance's keys in its state directory)", 2)


def export_key(pool: str, file: str | None, out=None) -> None:
    _need_root()
    _dataset(pool)
    if "/" in pool:
        raise KeyError_("export takes a pool's name (the key of its encryption root)", 2)
    props = _props(pool, "encryption,keylocation")
    if props.get("encryption", "off") in ("off", "-"):
        raise KeyError_(f"pool {pool} is not encrypted")
    path = _keys().path_of(props.get("keylocation"))
    if path is None:
        raise KeyError_(f"pool {pool}'s key is not one this appliance keeps (keylocation "
                        f"{props.get('keylocation')})")
    text = path.read_bytes().hex() + "\n"
    if file is None:
        (out or sys.stdout).write(text)
        return
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{file} exists: give a new file (a key is never written over another file)", 2) from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"key of pool {pool} written to {file} (mode 0600): keep it as safe as the data", file=sys.stderr)


def _read_key(file: str | None) -> bytes:
    data = sys.stdin.buffer.read(4096) if file is None else Path(file).read_bytes()[:4096]
    found = KEY_HEX.fullmatch(data)
    if found:
        return bytes.fromhex(found.group(1).decode())
    if len(data) == 32:
        return data
    raise KeyError_("not a key: expected 64 hexadecimal characters (as `vsnap key export` writes) "
                    "or 32 bytes", 2)


def import_key(dataset: str, file: str | None) -> None:
    """Loads the key of a replica (`pool/volume` on this appliance) and keeps it here, root
    only, so that it is loaded again at every start; then mounts the replica."""
    _need_root()
    _dataset(dataset)
    key = _read_key(file)
    props = _props(dataset, "encryption,encryptionroot,keystatus,type")
    if props.get("encryption", "off") in ("off", "-"):
        raise KeyError_(f"{dataset} is not encrypted: it needs no key")
    root = props.get("encryptionroot") or dataset
    keys = _keys()
    path = keys.new_path("imported")
    keys.write(path, key)
    try:
        if props.get("keystatus") != "available":
            load = _zfs("load-key", "-L", keys.location(path), root, check=False)
            if load.returncode != 0:
                raise KeyError_(f"the key does not open {root}: {(load.stderr or '').strip()}")
        else:  # loaded already: the key given must still be the right one
            check = _zfs("load-key", "-n", "-L", keys.location(path), root, check=False)
            if check.returncode != 0:
                raise KeyError_(f"the key does not open {root}: {(check.stderr or '').strip()}")
        _zfs("set", f"keylocation={keys.location(path)}", root)  # loaded again at every start
    except BaseException:
        keys.remove(path)
        raise
    if props.get("type") == "filesystem":
        mounted = _zfs("mount", dataset, check=False)
        if mounted.returncode != 0 and "already mounted" not in mounted.stderr:
            print(f"warning: {dataset} is not mounted: {mounted.stderr.strip()}", file=sys.stderr)
    print(f"key of {root} loaded and kept in {path} (root only); its snapshots can be restored now",
          file=sys.stderr)


def add_commands(resources) -> None:
    """The `key` resource of the vsnap command (run locally, as root)."""
    r = resources.add_parser("key", help="encryption keys of pools (run on the appliance, as root)",
                             description="Encryption keys of encrypted pools. Run on the appliance itself, "
                                         "as root: they read its state directory, never the API.")
    verbs = r.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("export", help="print or save an encrypted pool's key (64 hex characters)",
                         description="Print an encrypted pool's key (64 hexadecimal characters), or write "
                                     "it to FILE (a new file, mode 0600). Carry it to a partner to restore "
                                     "replicas of the pool's volumes there (`vsnap key import`).")
    p.add_argument("pool", help="the encrypted pool's name")
    p.add_argument("file", nargs="?", help="a new file to write it to (default: standard output)")
    p.set_defaults(local=lambda a: export_key(a.pool, a.file), _parser=p)
    p = verbs.add_parser("import", help="load a replica's key (from `vsnap key export` on the primary)",
                         description="On the partner: load the key of a replica of an encrypted volume "
                                     "(POOL/VOLUME here), keep it root-only in the state directory so it "
                                     "is loaded at every start, and mount the replica. The key is read "
                                     "from FILE or standard input.")
    p.add_argument("dataset", metavar="POOL/VOLUME", help="the replica, as its pool and volume name")
    p.add_argument("file", nargs="?", help="the key file (default: standard input)")
    p.set_defaults(local=lambda a: import_key(a.dataset, a.file), _parser=p)


def run(args: argparse.Namespace) -> int:
    try:
        args.local(args)
    except KeyError_ as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.code
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0
