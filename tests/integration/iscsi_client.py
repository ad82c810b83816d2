"""A real iSCSI initiator for the tests: libiscsi's command-line tools (iscsi-ls, iscsi-inq,
iscsi-readcapacity16) for what an initiator sees, and libiscsi itself through ctypes for
reading and writing data (Debian's libiscsi-bin has no iscsi-dd)."""
from __future__ import annotations

import ctypes
import glob
import re
import shutil
import subprocess
import time
from pathlib import Path

PORTAL = "127.0.0.1:3260"
SESSION_NORMAL = 2  # enum iscsi_session_type
BLOCK = 512


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def visible(initiator: str, prefix: str = "") -> dict[str, dict[int, int]]:
    """What `initiator` sees: {target name: {lun: size in bytes}} for targets named with
    `prefix`: discovery (iscsi-ls), then a login to each target and REPORT LUNS. A target that
    refuses the login (LIO: no ACL for this initiator) shows it nothing. What LUN 0 is when no
    volume is there is left out: tgt's controller, and LIO's placeholder for an initiator
    without a LUN 0 (peripheral qualifier "not connected")."""
    out = _run("iscsi-ls", "-i", initiator, f"iscsi://{PORTAL}")
    if out.returncode != 0 and shutil.which("tgtadm") and not _tgt_targets():
        return {}  # tgtd with no target at all ends discovery sessions: iscsi-ls fails
    assert out.returncode == 0, out.stderr + out.stdout
    seen: dict[str, dict[int, int]] = {}
    for target in re.findall(r"^Target:(\S+) Portal:", out.stdout, re.M):
        if not target.startswith(prefix):
            continue
        try:
            luns = report_luns(initiator, target)
        except PermissionError:
            continue
        seen[target] = {lun: capacity(initiator, target, lun) for lun in luns
                        if lun != 0 or _is_a_volume(initiator, target, lun)}
    return seen


def _is_a_volume(initiator: str, target: str, lun: int) -> bool:
    out = _run("iscsi-inq", "-i", initiator, f"iscsi://{PORTAL}/{target}/{lun}")
    assert out.returncode == 0, out.stderr or out.stdout
    return ("Peripheral Qualifier:CONNECTED" in out.stdout
            and "Peripheral Device Type:STORAGE_ARRAY_CONTROLLER" not in out.stdout)


def report_luns(initiator: str, target: str) -> list[int]:
    """The LUN numbers the target reports to this initiator (REPORT LUNS); PermissionError if
    it refuses the login."""
    with Session(initiator, target, -1) as session:
        return session.report_luns()


def _tgt_targets() -> str:
    return _run("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target").stdout


def backing_paths() -> set[str]:
    """The paths the machine's target serves blocks from: LIO's backstores (configfs), or
    tgt's backing stores."""
    if Path("/sys/kernel/config/target/core").is_dir():
        paths = (Path(p).read_text().strip() for p in glob.glob("/sys/kernel/config/target/core/*/*/udev_path"))
        return {p for p in paths if p}
    return set(re.findall(r"Backing store path: (\S+)", _tgt_targets()))


def luns_of(initiator: str, prefix: str) -> dict[int, tuple[str, int]]:
    """{lun: (serial, size)} over every target with `prefix` the initiator sees."""
    result = {}
    for target, luns in visible(initiator, prefix).items():
        for lun, size in luns.items():
            result[lun] = (serial(initiator, target, lun), size)
    return result


def capacity(initiator: str, target: str, lun: int) -> int:
    out = _run("iscsi-readcapacity16", "-i", initiator, f"iscsi://{PORTAL}/{target}/{lun}")
    assert out.returncode == 0, out.stderr or out.stdout
    return int(re.search(r"Total size:(\d+)", out.stdout).group(1))


def serial(initiator: str, target: str, lun: int) -> str:
    """The unit serial number (VPD page 0x80), by iscsi-inq."""
    out = _run("iscsi-inq", "-i", initiator, "-e", "1", "-c", "128", f"iscsi://{PORTAL}/{target}/{lun}")
    assert out.returncode == 0, out.stderr or out.stdout
    return re.search(r"Unit Serial Number:\[(.*)\]", out.stdout).group(1)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _lib():
    lib = ctypes.CDLL("libiscsi.so.7")
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.iscsi_create_context.restype, lib.iscsi_create_context.argtypes = vp, [cp]
    lib.iscsi_set_targetname.argtypes = [vp, cp]
    lib.iscsi_set_session_type.argtypes = [vp, i]
    lib.iscsi_full_connect_sync.argtypes = [vp, cp, i]
    lib.iscsi_get_error.restype, lib.iscsi_get_error.argtypes = cp, [vp]
    io_args = [vp, i, ctypes.c_uint64, ctypes.c_uint32, i, i, i, i, i, i, ctypes.POINTER(_IoVec), i]
    lib.iscsi_read16_iov_sync.restype, lib.iscsi_read16_iov_sync.argtypes = vp, io_args
    lib.iscsi_write16_iov_sync.restype = vp
    lib.iscsi_write16_iov_sync.argtypes = io_args[:3] + [cp] + io_args[3:]
    lib.iscsi_synchronizecache10_sync.restype = vp
    lib.iscsi_synchronizecache10_sync.argtypes = [vp, i, i, i, i, i]
    lib.iscsi_set_noautoreconnect.argtypes = [vp, i]
    lib.iscsi_set_timeout.argtypes = [vp, i]
    lib.iscsi_reportluns_sync.restype, lib.iscsi_reportluns_sync.argtypes = vp, [vp, i, i]
    lib.scsi_datain_unmarshall.restype, lib.scsi_datain_unmarshall.argtypes = vp, [vp]
    lib.scsi_free_scsi_task.argtypes = [vp]
    lib.iscsi_logout_sync.argtypes = [vp]
    lib.iscsi_destroy_context.argtypes = [vp]
    return lib


class Session:
    """One logged-in iSCSI session to one LUN."""

    def __init__(self, initiator: str, target: str, lun: int):
        self.lib = _lib()
        self.lun = lun
        self.ctx = self.lib.iscsi_create_context(initiator.encode())
        self.lib.iscsi_set_targetname(self.ctx, target.encode())
        self.lib.iscsi_set_session_type(self.ctx, SESSION_NORMAL)
        # A session the target ends must fail the next command, not be re-established
        # (libiscsi retries a lost session forever by default).
        self.lib.iscsi_set_noautoreconnect(self.ctx, 1)
        self.lib.iscsi_set_timeout(self.ctx, 30)
        if self.lib.iscsi_full_connect_sync(self.ctx, PORTAL.encode(), lun) != 0:
            error = self.error()
            self.lib.iscsi_destroy_context(self.ctx)
            raise PermissionError(f"login to {target} LUN {lun} as {initiator} failed: {error}")

    def error(self) -> str:
        return (self.lib.iscsi_get_error(self.ctx) or b"").decode(errors="replace")

    def _done(self, task, what: str) -> None:
        if not task:
            raise OSError(f"{what} failed: {self.error()}")
        status = ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0]  # scsi_task.status comes first
        self.lib.scsi_free_scsi_task(task)
        if status != 0:
            raise OSError(f"{what}: SCSI status {status}: {self.error()}")

    def report_luns(self) -> list[int]:
        task = self.lib.iscsi_reportluns_sync(self.ctx, 0, 4096)
        if not task:
            raise OSError(f"REPORT LUNS failed: {self.error()}")
        try:
            if ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0] != 0:
                raise OSError(f"REPORT LUNS: {self.error()}")
            # struct scsi_reportluns_list { uint32_t num; uint16_t luns[]; }
            listing = self.lib.scsi_datain_unmarshall(task)
            if not listing:
                raise OSError("REPORT LUNS: an answer libiscsi cannot read")
            count = ctypes.cast(listing, ctypes.POINTER(ctypes.c_uint32))[0]
            luns = ctypes.cast(listing + 4, ctypes.POINTER(ctypes.c_uint16))
            return sorted(luns[n] for n in range(count))
        finally:
            self.lib.scsi_free_scsi_task(task)

    def read(self, offset: int, length: int) -> bytes:
        buf = ctypes.create_string_buffer(length)
        iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), length)
        self._done(self.lib.iscsi_read16_iov_sync(self.ctx, self.lun, offset // BLOCK, length, BLOCK,
                                                  0, 0, 0, 0, 0, ctypes.byref(iov), 1), "READ16")
        return buf.raw

    def write(self, offset: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        self._done(self.lib.iscsi_write16_iov_sync(self.ctx, self.lun, offset // BLOCK, None, len(data), BLOCK,
                                                   0, 0, 1, 0, 0, ctypes.byref(iov), 1), "WRITE16")
        self._done(self.lib.iscsi_synchronizecache10_sync(self.ctx, self.lun, 0, 0, 0, 0), "SYNCHRONIZE CACHE")

    def close(self) -> None:
        if self.ctx:
            self.lib.iscsi_logout_sync(self.ctx)
            self.lib.iscsi_destroy_context(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(initiator: str, target: str, lun: int, offset: int, length: int) -> bytes:
    with Session(initiator, target, lun) as s:
        return s.read(offset, length)


def write(initiator: str, target: str, lun: int, offset: int, data: bytes) -> None:
    with Session(initiator, target, lun) as s:
        s.write(offset, data)


def wait_until(predicate, timeout: float = 60, step: float = 0.5):
    """Polls until predicate() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
