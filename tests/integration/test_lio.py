"""The LIO driver against the kernel's target (configfs), seen by libiscsi's initiator.

Marked `kernel_stack`: it runs inside the kernel lab's guest (make guest-suite, run by
tests/kernel as part of make test), where the kernel has LIO; the host's kernel has none, and
there the marker deselects it. It owns only its own target and backstores, named for this test."""
from __future__ import annotations

import os

import pytest

from vsnap.drivers.iscsi import CONFIGFS_TARGET, HostExport, LunExport

from . import iscsi_client as ic

pytestmark = pytest.mark.kernel_stack

BASE = "iqn.2026-11.local.vsnaptest:lio"
IQN_A = "iqn.2026-11.test.vsnap:lio-a"
IQN_B = "iqn.2026-11.test.vsnap:lio-b"
MIB = 1 << 20


@pytest.fixture
def driver():
    assert os.path.isdir(CONFIGFS_TARGET), f"{CONFIGFS_TARGET} is absent: this kernel has no LIO"
    from vsnap.drivers.iscsi_lio import LioDriver
    lio = LioDriver(BASE)
    yield lio
    lio.apply([])
    for target in lio.rtslib.FabricModule("iscsi").targets:
        if target.wwn == BASE:
            target.delete()


@pytest.fixture
def images(tmp_path):
    def make(name: str, size: int, data: bytes = b"") -> str:
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
            f.write(data)
        return str(path)
    return make


def test_each_initiator_sees_its_own_luns_with_serial_size_and_data(driver, images):
    data = os.urandom(MIB)
    a = LunExport(lun=0, volume_id=1, path=images("a.img", 32 * MIB, data), serial="serial-a", size=32 * MIB)
    b = LunExport(lun=0, volume_id=2, path=images("b.img", 16 * MIB), serial="serial-b", size=16 * MIB)
    shared = LunExport(lun=1, volume_id=1, path=a.path, serial=a.serial, size=a.size)
    driver.apply([HostExport(1, (IQN_A,), (a,)), HostExport(2, (IQN_B,), (b, shared))])
    assert ic.luns_of(IQN_A, BASE) == {0: ("serial-a", 32 * MIB)}
    assert ic.luns_of(IQN_B, BASE) == {0: ("serial-b", 16 * MIB), 1: ("serial-a", 32 * MIB)}
    assert ic.luns_of("iqn.2026-11.test.vsnap:stranger", BASE) == {}
    assert ic.read(IQN_A, BASE, 0, 0, MIB) == data
    before = driver.state()
    driver.apply([HostExport(1, (IQN_A,), (a,)), HostExport(2, (IQN_B,), (b, shared))])
    assert driver.state() == before
    driver.apply([HostExport(1, (IQN_B,), (a,))])  # host 2 gone, host 1's initiator changed
    assert ic.luns_of(IQN_A, BASE) == {}
    assert ic.luns_of(IQN_B, BASE) == {0: ("serial-a", 32 * MIB)}
    assert [t.wwn for t in driver.targets()] == [BASE]
