"""The LIO iSCSI driver against an in-memory model of rtslib-fb's object tree.

There is no /sys/kernel/config/target here, so rtslib-fb itself cannot run. `FakeLio` keeps
the configuration as plain tables and hands the driver a module with rtslib's class names;
each fake class has the real constructor signature (checked against the installed
rtslib_fb below) and mirrors the behaviour the driver relies on: create/lookup modes,
recursive deletes, normalized WWNs, serials read back stripped. Every change goes through
`FakeLio.record`, so tests can see exactly what was changed, in what order, and make any
change fail.
"""
from __future__ import annotations

import copy
import inspect
import re
import types
import uuid

import pytest
import rtslib_fb

from vsnap.drivers.iscsi_base import HostExport, LunExport, TargetError, TargetPort
from vsnap.drivers.iscsi_lio import LioDriver, normalize_wwn, path_kind

BASE = "iqn.2024-01.com.example.vsnap:appliance1"
TPG1 = ("iscsi", BASE, 1)
A1 = "iqn.1994-05.com.redhat:host-a1"
A2 = "iqn.1994-05.com.redhat:host-a2"
B1 = "iqn.1991-05.com.microsoft:host-b"
GIB = 1 << 30

DEFAULT_TPG_ATTRIBUTES = {  # the kernel's defaults for a new iSCSI TPG
    "authentication": "1", "generate_node_acls": "0", "demo_mode_write_protect": "1",
    "cache_dynamic_acls": "0", "prod_mode_write_protect": "0"}


# -- the fake rtslib-fb ------------------------------------------------------------------------
class FakeLio:
    """The LIO configuration as tables. Keys mirror configfs paths: a TPG is (fabric, wwn,
    tag), a LUN or ACL adds its index or initiator to that, a mapped LUN adds its number."""

    def __init__(self):
        self.paths: dict[str, str] = {}  # what the driver's path_kind and the fake backstores see
        self.sos: dict[tuple[str, str], dict] = {}  # (plugin, name) -> dev, size, wwn, ...
        self.targets: set[tuple[str, str]] = set()  # (fabric, wwn)
        self.tpgs: dict[tuple, dict] = {}  # -> {"enable": bool, "attrib": {...}}
        self.portals: set[tuple] = set()  # tpg key + (ip, port)
        self.luns: dict[tuple, tuple[str, str]] = {}  # tpg key + (index,) -> storage object key
        self.acls: set[tuple] = set()  # tpg key + (node wwn,)
        self.mluns: dict[tuple, dict] = {}  # acl key + (number,) -> {"tpg_lun", "write_protect"}
        self.log: list[tuple] = []
        self.fail: dict[tuple[str, str], BaseException] = {}  # (op, kind) -> raised instead
        self.bs_cache: dict[str, int] = {}
        self.module = _fake_rtslib(self)

    def record(self, op: str, kind: str, key) -> None:
        """Every change passes here before it is made: logged, or failed on request."""
        if (op, kind) in self.fail:
            raise self.fail[(op, kind)]
        self.log.append((op, kind, key))

    def path_kind(self, path: str) -> str:
        return self.paths.get(path, "missing")

    def snapshot(self):
        return copy.deepcopy((self.sos, self.targets, self.tpgs, self.portals, self.luns,
                              self.acls, self.mluns))

    # Views computed from the tables, not through the driver.
    def view(self, tpg=TPG1) -> dict[str, dict[int, tuple]]:
        """initiator -> LUN number -> (plugin, storage object, device, serial, write protect)."""
        out: dict[str, dict[int, tuple]] = {}
        for acl in self.acls:
            if acl[:3] == tpg:
                out[acl[3]] = {}
        for key, m in self.mluns.items():
            if key[:3] == tpg:
                plugin, name = self.luns[tpg + (m["tpg_lun"],)]
                so = self.sos[(plugin, name)]
                out[key[3]][key[4]] = (plugin, name, so["dev"], so["wwn"], m["write_protect"])
        return out

    def tpg_luns(self, tpg=TPG1) -> dict[int, tuple[str, str]]:
        return {key[3]: so for key, so in self.luns.items() if key[:3] == tpg}

    def changes(self, since: int = 0) -> list[tuple]:
        return self.log[since:]


def _fake_rtslib(world: FakeLio) -> types.SimpleNamespace:
    class RTSLibError(Exception):
        pass

    class RTSLibNotInCFSError(RTSLibError):
        pass

    class RTSLibBrokenLink(RTSLibError):
        pass

    def need(exists: bool, mode: str, what: str) -> bool:
        """rtslib's CFSNode._create_in_cfs_ine: True when the object is to be made."""
        if mode not in ("any", "lookup", "create"):
            raise RTSLibError(f"Invalid mode: {mode}")
        if exists and mode == "create":
            raise RTSLibError(f"This {what} already exists in configFS")
        if not exists and mode == "lookup":
            raise RTSLibNotInCFSError(f"No such {what} in configfs")
        return not exists

    def normalize(wwn: str) -> str:
        """rtslib.utils.normalize_wwn for the iqn/naa/eui names used here."""
        wwn = wwn.strip().lower()
        if (re.match(r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*", wwn) and " " not in wwn and "_" not in wwn) \
                or re.match(r"(naa\.[125c-f][0-9a-f]{15}|eui\.[0-9a-f]{16})$", wwn):
            return wwn
        raise RTSLibError("WWN not valid as: iqn, naa, eui")

    class Node:
        """CFSNode: a handle on a configfs path. Handles are made afresh on every listing;
        equal handles name the same object, and (like CFSNode) they are not hashable."""

        _key: tuple = ()

        def __eq__(self, other):
            return type(self) is type(other) and self._key == other._key

        __hash__ = None

        def _present(self) -> bool:
            raise NotImplementedError

        @property
        def exists(self) -> bool:
            return self._present()

        def _check_self(self) -> None:
            if not self._present():
                raise RTSLibNotInCFSError(f"This {type(self).__name__} does not exist in configFS")

    class RTSRoot(Node):
        def __init__(self):
            self._key = ("root",)

        def _present(self):
            return True

        @property
        def targets(self):
            return [Target(FabricModule(f), w, "lookup") for f, w in sorted(world.targets)]

        @property
        def storage_objects(self):
            return [_SO_CLASSES[p](n) for p, n in sorted(world.sos)]

    class FabricModule:
        def __init__(self, name):
            self.name = name

        @property
        def targets(self):
            return [Target(self, w, "lookup") for f, w in sorted(world.targets) if f == self.name]

    class Target(Node):
        def __init__(self, fabric_module, wwn=None, mode='any'):
            if wwn is None:
                raise RTSLibError("the fake makes no WWNs up")
            self.fabric_module = fabric_module
            self.wwn = normalize(wwn)
            self._key = (fabric_module.name, self.wwn)
            if need(self._present(), mode, "Target"):
                world.record("create", "target", self._key)
                world.targets.add(self._key)

        def _present(self):
            return self._key in world.targets

        @property
        def tpgs(self):
            self._check_self()
            return [TPG(self, k[2], "lookup") for k in sorted(world.tpgs) if k[:2] == self._key]

        def delete(self):
            self._check_self()
            for tpg in self.tpgs:
                tpg.delete()
            world.record("delete", "target", self._key)
            world.targets.discard(self._key)

    class TPG(Node):
        def __init__(self, parent_target, tag=None, mode='any'):
            if tag is None:
                raise RTSLibError("the fake makes no tags up")
            self._parent_target = parent_target
            self._tag = int(tag)
            self._key = parent_target._key + (self._tag,)
            if need(self._present(), mode, "TPG"):
                parent_target._check_self()
                world.record("create", "tpg", self._key)
                world.tpgs[self._key] = {"enable": False, "attrib": dict(DEFAULT_TPG_ATTRIBUTES)}

        def _present(self):
            return self._key in world.tpgs

        tag = property(lambda self: self._tag)
        parent_target = property(lambda self: self._parent_target)

        def _get_enable(self):
            self._check_self()
            return world.tpgs[self._key]["enable"]

        def _set_enable(self, boolean):
            self._check_self()
            if bool(boolean) != world.tpgs[self._key]["enable"]:  # rtslib writes only a change
                world.record("set", "enable", self._key + (bool(boolean),))
                world.tpgs[self._key]["enable"] = bool(boolean)

        enable = property(_get_enable, _set_enable)

        @property
        def network_portals(self):
            self._check_self()
            return [NetworkPortal(self, k[3], k[4], "lookup") for k in sorted(world.portals)
                    if k[:3] == self._key]

        @property
        def node_acls(self):
            self._check_self()
            return [NodeACL(self, k[3], "lookup") for k in sorted(world.acls) if k[:3] == self._key]

        @property
        def luns(self):
            self._check_self()
            return [LUN(self, k[3]) for k in sorted(world.luns) if k[:3] == self._key]

        def get_attribute(self, attribute):
            self._check_self()
            attrib = world.tpgs[self._key]["attrib"]
            if attribute not in attrib:
                raise RTSLibError(f"Cannot find attribute: {attribute}")
            return attrib[attribute]

        def set_attribute(self, attribute, value):
            self._check_self()
            if attribute not in world.tpgs[self._key]["attrib"]:
                raise RTSLibError(f"Cannot find attribute: {attribute}")
            world.record("set", "tpg_attribute", self._key + (attribute, str(value)))
            world.tpgs[self._key]["attrib"][attribute] = str(value)

        def delete(self):
            self._check_self()
            self.enable = False
            for acl in self.node_acls:
                acl.delete()
            for lun in self.luns:
                lun.delete()
            for portal in self.network_portals:
                portal.delete()
            world.record("delete", "tpg", self._key)
            del world.tpgs[self._key]

    class NetworkPortal(Node):
        def __init__(self, parent_tpg, ip_address, port=3260, mode='any'):
            self._parent_tpg = parent_tpg
            self._ip_address = str(ip_address)
            self._port = int(port)
            self._key = parent_tpg._key + (self._ip_address, self._port)
            if need(self._present(), mode, "NetworkPortal"):
                parent_tpg._check_self()
                world.record("create", "portal", self._key)
                world.portals.add(self._key)

        def _present(self):
            return self._key in world.portals

        parent_tpg = property(lambda self: self._parent_tpg)
        ip_address = property(lambda self: self._ip_address)
        port = property(lambda self: self._port)

        def delete(self):
            world.record("delete", "portal", self._key)
            world.portals.discard(self._key)

    class NodeACL(Node):
        def __init__(self, parent_tpg, node_wwn, mode='any'):
            self._parent_tpg = parent_tpg
            self._node_wwn = normalize(node_wwn)
            self._key = parent_tpg._key + (self._node_wwn,)
            if need(self._present(), mode, "NodeACL"):
                parent_tpg._check_self()
                world.record("create", "acl", self._key)
                world.acls.add(self._key)

        def _present(self):
            return self._key in world.acls

        parent_tpg = property(lambda self: self._parent_tpg)
        node_wwn = property(lambda self: self._node_wwn)

        @property
        def mapped_luns(self):
            self._check_self()
            return [MappedLUN(self, k[4]) for k in sorted(world.mluns) if k[:4] == self._key]

        def delete(self):
            self._check_self()
            for mlun in self.mapped_luns:
                mlun.delete()
            world.record("delete", "acl", self._key)
            world.acls.discard(self._key)

    class MappedLUN(Node):
        def __init__(self, parent_nodeacl, mapped_lun,
                     tpg_lun=None, write_protect=None, alias=None):
            if not parent_nodeacl.exists:
                raise RTSLibError("The parent_nodeacl does not exist")
            self._parent_nodeacl = parent_nodeacl
            self._mapped_lun = int(mapped_lun)
            if self._mapped_lun < 0:
                raise RTSLibError("Mapped LUN must be >= 0")
            self._key = parent_nodeacl._key + (self._mapped_lun,)
            if tpg_lun is None:
                if write_protect is not None:
                    raise RTSLibError("The write_protect parameter has no meaning without tpg_lun")
                need(self._present(), "lookup", "MappedLUN")
                return
            need(self._present(), "create", "MappedLUN")
            index = tpg_lun.lun if isinstance(tpg_lun, LUN) else int(tpg_lun)
            if parent_nodeacl.parent_tpg._key + (index,) not in world.luns:
                raise RTSLibError(f"LUN {index} does not exist in this TPG")
            try:
                protect = int(write_protect) > 0
            except (TypeError, ValueError):  # rtslib: a bare except, so None means False
                protect = False
            world.record("create", "mapped_lun", self._key + (index, protect))
            world.mluns[self._key] = {"tpg_lun": index, "write_protect": protect}

        def _present(self):
            return self._key in world.mluns

        mapped_lun = property(lambda self: self._mapped_lun)
        parent_nodeacl = property(lambda self: self._parent_nodeacl)
        node_wwn = property(lambda self: self._parent_nodeacl.node_wwn)

        @property
        def tpg_lun(self):
            self._check_self()
            index = world.mluns[self._key]["tpg_lun"]
            tpg = self._parent_nodeacl.parent_tpg
            if tpg._key + (index,) not in world.luns:
                raise RTSLibBrokenLink("Broken MappedLUN, no TPG LUN found")
            return LUN(tpg, index)

        def _get_write_protect(self):
            self._check_self()
            return world.mluns[self._key]["write_protect"]

        def _set_write_protect(self, write_protect):
            self._check_self()
            world.record("set", "write_protect", self._key + (bool(write_protect),))
            world.mluns[self._key]["write_protect"] = bool(write_protect)

        write_protect = property(_get_write_protect, _set_write_protect)

        def delete(self):
            self._check_self()
            world.record("delete", "mapped_lun", self._key)
            del world.mluns[self._key]

    class LUN(Node):
        def __init__(self, parent_tpg, lun=None, storage_object=None, alias=None):
            self._parent_tpg = parent_tpg
            if lun is None:  # like rtslib: the lowest free index
                used = {k[3] for k in world.luns if k[:3] == parent_tpg._key}
                lun = next(i for i in range(65536) if i not in used)
            self._lun = int(lun)
            if not 0 <= self._lun <= 65535:
                raise RTSLibError("LUN must be 0 to 65535")
            self._key = parent_tpg._key + (self._lun,)
            if storage_object is None:
                need(self._present(), "lookup", "LUN")
                return
            need(self._present(), "create", "LUN")
            if not storage_object.exists:
                raise RTSLibError("storage_object does not exist in configFS")
            world.record("create", "lun", self._key + (storage_object._key,))
            world.luns[self._key] = storage_object._key

        def _present(self):
            return self._key in world.luns

        parent_tpg = property(lambda self: self._parent_tpg)
        lun = property(lambda self: self._lun)

        @property
        def storage_object(self):
            self._check_self()
            plugin, name = world.luns[self._key]
            if (plugin, name) not in world.sos:
                raise RTSLibBrokenLink("Broken LUN in configFS, no storage object")
            return _SO_CLASSES[plugin](name)

        @property
        def mapped_luns(self):
            self._check_self()
            return [MappedLUN(NodeACL(self._parent_tpg, k[3], "lookup"), k[4])
                    for k, m in sorted(world.mluns.items())
                    if k[:3] == self._parent_tpg._key and m["tpg_lun"] == self._lun]

        def delete(self):
            self._check_self()
            for mlun in self.mapped_luns:  # like rtslib: its mappings go with it
                mlun.delete()
            world.record("delete", "lun", self._key)
            del world.luns[self._key]

    class StorageObject(Node):
        _plugin = ""

        def _setup(self, name, create: bool):
            if any(c in name for c in "/ \t\n"):
                raise RTSLibError("A storage object's name cannot contain /, newline or spaces/tabs")
            self._name = name
            self.plugin = self._plugin
            self._key = (self._plugin, name)
            if create:
                if self._present():
                    raise RTSLibError(f"Storage object {self._plugin}/{name} exists")
            else:
                need(self._present(), "lookup", type(self).__name__)

        def _store(self, **fields):
            if not fields["wwn"]:
                fields["wwn"] = str(uuid.uuid4())  # rtslib makes a serial up
            world.record("create", "storage_object", self._key + (fields["dev"], fields["wwn"]))
            world.sos[self._key] = fields

        def _present(self):
            return self._key in world.sos

        name = property(lambda self: self._name)

        @property
        def udev_path(self):
            self._check_self()
            return world.sos[self._key]["dev"]

        def _get_wwn(self):
            self._check_self()
            return world.sos[self._key]["wwn"].strip()  # read back from configfs, stripped

        def _set_wwn(self, wwn):
            self._check_self()
            world.record("set", "wwn", self._key + (wwn,))
            world.sos[self._key]["wwn"] = wwn

        wwn = property(_get_wwn, _set_wwn)

        @property
        def attached_luns(self):
            self._check_self()
            for key, so in sorted(world.luns.items()):
                if so == self._key:
                    fabric, wwn, tag, index = key
                    yield LUN(TPG(Target(FabricModule(fabric), wwn, "lookup"), tag, "lookup"), index)

        def delete(self, save=False):
            self._check_self()
            for lun in list(self.attached_luns):  # like rtslib: every LUN using it goes too
                lun.delete()
            world.record("delete", "storage_object", self._key)
            del world.sos[self._key]

    class FileIOStorageObject(StorageObject):
        _plugin = "fileio"

        def __init__(self, name, dev=None, size=None,
                     wwn=None, write_back=False, aio=False, index=None):
            self._setup(name, create=dev is not None)
            if dev is None:
                return
            kind = world.paths.get(dev)
            if kind not in (None, "file", "block"):
                raise RTSLibError("Path not to a file or block device")
            if kind != "block" and size is None:
                raise RTSLibError("Path is to a file, size needed")
            self._store(dev=dev, size=None if kind == "block" else int(size), wwn=wwn,
                        write_back=write_back, aio=aio)

        @property
        def size(self):
            self._check_self()
            return world.sos[self._key]["size"]

    class BlockStorageObject(StorageObject):
        _plugin = "block"

        def __init__(self, name, dev=None, wwn=None, readonly=False,
                     write_back=False, index=None):
            self._setup(name, create=dev is not None)
            if dev is None:
                return
            if world.paths.get(dev) != "block":
                raise RTSLibError(f"Device {dev} is not a TYPE_DISK block device")
            self._store(dev=dev, wwn=wwn, readonly=readonly, write_back=write_back)

    _SO_CLASSES = {"fileio": FileIOStorageObject, "block": BlockStorageObject}

    return types.SimpleNamespace(
        RTSRoot=RTSRoot, FabricModule=FabricModule, Target=Target, TPG=TPG,
        NetworkPortal=NetworkPortal, NodeACL=NodeACL, MappedLUN=MappedLUN, LUN=LUN,
        FileIOStorageObject=FileIOStorageObject, BlockStorageObject=BlockStorageObject,
        RTSLibError=RTSLibError, RTSLibNotInCFSError=RTSLibNotInCFSError,
        RTSLibBrokenLink=RTSLibBrokenLink, tcm=types.SimpleNamespace(bs_cache=world.bs_cache))


FAKE_CLASSES = ("RTSRoot", "FabricModule", "Target", "TPG", "NetworkPortal", "NodeACL",
                "MappedLUN", "LUN", "FileIOStorageObject", "BlockStorageObject")


# -- the fakes against the real rtslib-fb ----------------------------------------------------
@pytest.mark.parametrize("name", FAKE_CLASSES)
def test_fake_constructor_signatures_match_rtslib(name):
    fake = getattr(FakeLio().module, name)
    real = getattr(rtslib_fb, name)
    assert str(inspect.signature(fake)) == str(inspect.signature(real))


def _real_class(name: str) -> type:
    # FabricModule(name) is a factory returning e.g. ISCSIFabricModule; building one touches
    # no configfs.
    return type(rtslib_fb.FabricModule("iscsi")) if name == "FabricModule" else getattr(rtslib_fb, name)


@pytest.mark.parametrize("name", FAKE_CLASSES)
def test_fake_properties_and_methods_exist_on_rtslib(name):
    fake, real = getattr(FakeLio().module, name), _real_class(name)
    for attr in (a for a in dir(fake) if not a.startswith("_")):
        fake_attr, real_attr = inspect.getattr_static(fake, attr), inspect.getattr_static(real, attr, None)
        assert real_attr is not None, f"{name}.{attr} is not in rtslib"
        if isinstance(fake_attr, property):
            assert isinstance(real_attr, property), f"{name}.{attr} is no property in rtslib"
            assert (fake_attr.fset is None) == (real_attr.fset is None), f"{name}.{attr} settable?"
        else:
            assert callable(fake_attr) and callable(real_attr), f"{name}.{attr}"


@pytest.mark.parametrize("source, attr", [
    (rtslib_fb.Target.__init__, "fabric_module"),
    (rtslib_fb.Target.__init__, "wwn"),
    (rtslib_fb.tcm.StorageObject.__init__, "plugin"),
])
def test_fake_instance_attributes_are_set_by_rtslib(source, attr):
    """Attributes rtslib sets in __init__ rather than as properties."""
    assert re.search(rf"self\.{attr}\b[^=\n]*=", inspect.getsource(source))


def test_fabric_module_name_is_an_instance_attribute():
    assert vars(rtslib_fb.FabricModule("iscsi"))["name"] == "iscsi"


def test_rtslib_errors_are_one_family():
    assert issubclass(rtslib_fb.RTSLibNotInCFSError, rtslib_fb.RTSLibError)
    assert issubclass(rtslib_fb.RTSLibBrokenLink, rtslib_fb.RTSLibError)
    assert isinstance(rtslib_fb.tcm.bs_cache, dict)  # what the driver empties before an apply


# -- helpers ---------------------------------------------------------------------------------
def vol(number: int, volume_id: int, read_only: bool = False, *, path: str | None = None,
        serial: str | None = None, size: int = GIB) -> LunExport:
    return LunExport(number, volume_id, path or f"/dev/zvol/tank/v{volume_id}",
                     serial if serial is not None else f"VSNAP-{volume_id:06d}", size, read_only)


@pytest.fixture
def lio() -> FakeLio:
    world = FakeLio()
    for i in range(1, 10):
        world.paths[f"/dev/zvol/tank/v{i}"] = "block"
        world.paths[f"/srv/vsnap/f{i}.img"] = "file"
    return world


def driver_for(world: FakeLio, base_iqn: str = BASE, dbroot: str | None = None) -> LioDriver:
    return LioDriver(base_iqn, rtslib=world.module, path_kind=world.path_kind, dbroot=dbroot)


def test_the_dbroot_rtslib_insists_on_is_made_before_lio_is_read(lio, tmp_path):
    # rtslib-fb refuses to work ("Cannot set dbroot to /etc/target") where it is missing.
    dbroot = tmp_path / "etc" / "target"
    list(driver_for(lio, dbroot=str(dbroot))._owned_sos())
    assert dbroot.is_dir()


@pytest.fixture
def driver(lio) -> LioDriver:
    return driver_for(lio)


def so_name(driver: LioDriver, volume_id: int) -> str:
    return f"{driver.so_prefix}{volume_id}"


def add_foreign(world: FakeLio) -> None:
    """What another admin or appliance has in the same kernel: a target with an ACL and a
    LUN on its own backstore, a backstore of another vsnap appliance, a loopback target."""
    other = ("iscsi", "iqn.2003-01.org.linux-iscsi.other:sn.1234")
    world.targets |= {other, ("loopback", "naa.5001405abcdef012")}
    world.tpgs[other + (1,)] = {"enable": True, "attrib": dict(DEFAULT_TPG_ATTRIBUTES)}
    world.portals.add(other + (1, "0.0.0.0", 3260))
    world.sos[("block", "data1")] = {"dev": "/dev/sdb", "wwn": "FOREIGN1"}
    world.sos[("fileio", "vsnap-000000000000-1")] = {"dev": "/x.img", "size": 5, "wwn": "OTHERAPP"}
    world.luns[other + (1, 0)] = ("block", "data1")
    world.acls.add(other + (1, A1))
    world.mluns[other + (1, A1, 0)] = {"tpg_lun": 0, "write_protect": False}


# -- first apply -----------------------------------------------------------------------------
def test_driver_constants_and_default_module():
    d = LioDriver(BASE)  # rtslib_fb imported lazily; nothing in configfs is touched
    assert d.rtslib is rtslib_fb
    assert (d.name, d.first_lun, d.max_lun) == ("lio", 0, 255)


def test_first_apply_builds_target_tpg_portal_acls_and_luns(lio, driver):
    driver.apply([HostExport(1, (A1, A2), (vol(0, 1), vol(1, 2))),
                  HostExport(2, (B1,), (vol(0, 3),))])

    assert lio.targets == {("iscsi", BASE)}
    assert set(lio.tpgs) == {TPG1}
    assert lio.tpgs[TPG1]["enable"] is True
    assert lio.tpgs[TPG1]["attrib"] == {**DEFAULT_TPG_ATTRIBUTES, "authentication": "0",
                                        "generate_node_acls": "0", "demo_mode_write_protect": "1",
                                        "cache_dynamic_acls": "0"}
    assert lio.portals == {TPG1 + ("0.0.0.0", 3260)}
    assert lio.sos == {
        ("block", so_name(driver, 1)): {"dev": "/dev/zvol/tank/v1", "wwn": "VSNAP-000001",
                                        "readonly": False, "write_back": False},
        ("block", so_name(driver, 2)): {"dev": "/dev/zvol/tank/v2", "wwn": "VSNAP-000002",
                                        "readonly": False, "write_back": False},
        ("block", so_name(driver, 3)): {"dev": "/dev/zvol/tank/v3", "wwn": "VSNAP-000003",
                                        "readonly": False, "write_back": False},
    }
    assert lio.tpg_luns() == {0: ("block", so_name(driver, 1)), 1: ("block", so_name(driver, 2)),
                              2: ("block", so_name(driver, 3))}
    a_view = {0: ("block", so_name(driver, 1), "/dev/zvol/tank/v1", "VSNAP-000001", False),
              1: ("block", so_name(driver, 2), "/dev/zvol/tank/v2", "VSNAP-000002", False)}
    assert lio.view() == {
        A1: a_view, A2: a_view,
        B1: {0: ("block", so_name(driver, 3), "/dev/zvol/tank/v3", "VSNAP-000003", False)}}


def test_each_change_in_configfs_is_announced_as_a_step_and_reads_are_not(lio):
    steps: list[str] = []
    d = LioDriver(BASE, rtslib=lio.module, path_kind=lio.path_kind, dbroot=None, on_step=steps.append)
    d.apply([HostExport(1, (A1,), (vol(0, 1),))])
    assert steps and all(step.startswith("LIO: ") for step in steps)
    assert not any(step.startswith(("LIO: reading", "LIO: looking")) for step in steps)
    assert steps[0] == f"LIO: creating target {BASE}"


def test_first_apply_orders_attributes_first_and_enable_last(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    kinds = [(op, kind) for op, kind, _ in lio.log]
    assert kinds == [("create", "target"), ("create", "tpg"),
                     ("set", "tpg_attribute"),  # only authentication differs from the defaults
                     ("create", "storage_object"), ("create", "lun"), ("create", "acl"),
                     ("create", "mapped_lun"), ("create", "portal"), ("set", "enable")]
    assert lio.log[2][2] == TPG1 + ("authentication", "0")


def test_target_exists_after_apply_without_hosts(lio, driver):
    assert driver.targets() == []
    driver.apply([])
    assert lio.targets == {("iscsi", BASE)}
    assert lio.tpgs[TPG1]["enable"] is True
    assert lio.portals == {TPG1 + ("0.0.0.0", 3260)}
    assert lio.acls == set() and lio.luns == {} and lio.sos == {}
    assert driver.targets() == [TargetPort(BASE, None)]


def test_file_backed_volume_gets_fileio_with_size_serial_and_no_write_back(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(3, 7, path="/srv/vsnap/f7.img", size=5 * GIB),))])
    assert lio.sos == {("fileio", so_name(driver, 7)): {
        "dev": "/srv/vsnap/f7.img", "size": 5 * GIB, "wwn": "VSNAP-000007",
        "write_back": False, "aio": False}}
    assert lio.view() == {A1: {3: ("fileio", so_name(driver, 7), "/srv/vsnap/f7.img",
                                   "VSNAP-000007", False)}}


# -- masking and sharing ---------------------------------------------------------------------
def test_each_host_sees_only_its_own_lun_numbers(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(5, 2))),
                  HostExport(2, (B1,), (vol(0, 3), vol(9, 4)))])
    view = lio.view()
    assert set(view[A1]) == {0, 5} and set(view[B1]) == {0, 9}
    assert {v[1] for v in view[A1].values()} == {so_name(driver, 1), so_name(driver, 2)}
    assert {v[1] for v in view[B1].values()} == {so_name(driver, 3), so_name(driver, 4)}
    # LUN 0 is a different volume for each host.
    assert view[A1][0][3] == "VSNAP-000001" and view[B1][0][3] == "VSNAP-000003"


def test_volume_on_two_hosts_shares_one_storage_object_and_one_tpg_lun(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 5),)),
                  HostExport(2, (B1,), (vol(4, 5, read_only=True),))])
    assert list(lio.sos) == [("block", so_name(driver, 5))]
    assert lio.tpg_luns() == {0: ("block", so_name(driver, 5))}
    assert lio.mluns == {TPG1 + (A1, 0): {"tpg_lun": 0, "write_protect": False},
                         TPG1 + (B1, 4): {"tpg_lun": 0, "write_protect": True}}


def test_read_only_becomes_write_protect(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1, read_only=True), vol(1, 2)))])
    assert {n: v[4] for n, v in lio.view()[A1].items()} == {0: True, 1: False}


def test_initiator_of_two_hosts_sees_both_unless_numbers_clash(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),)), HostExport(2, (A1, B1), (vol(1, 2),))])
    assert set(lio.view()[A1]) == {0, 1} and set(lio.view()[B1]) == {1}
    before = lio.snapshot()
    with pytest.raises(TargetError, match="belongs to hosts 1 and 2"):
        driver.apply([HostExport(1, (A1,), (vol(0, 1),)), HostExport(2, (A1,), (vol(0, 2),))])
    assert lio.snapshot() == before


# -- idempotence -----------------------------------------------------------------------------
HOSTS = [HostExport(1, (A1, A2), (vol(0, 1), vol(1, 2, read_only=True),
                                  vol(2, 3, path="/srv/vsnap/f3.img", size=3 * GIB))),
         HostExport(2, (B1,), (vol(0, 2), vol(7, 4)))]


def test_second_identical_apply_changes_nothing(lio, driver):
    driver.apply(HOSTS)
    before, n = lio.snapshot(), len(lio.log)
    driver.apply(HOSTS)
    driver_for(lio).apply(list(reversed(HOSTS)))  # a fresh driver, hosts in another order
    assert lio.changes(n) == []
    assert lio.snapshot() == before


def test_initiator_names_compare_case_insensitively(lio, driver):
    upper = [HostExport(1, (A1.upper().replace("IQN.", "iqn."),), (vol(0, 1),))]
    driver.apply(upper)
    assert lio.acls == {TPG1 + (A1,)}
    n = len(lio.log)
    driver.apply(upper)
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    assert lio.changes(n) == []


def test_state_equal_after_identical_applies_and_different_after_changes(lio, driver):
    driver.apply(HOSTS)
    first = driver.state()
    hash(first)
    driver.apply(HOSTS)
    assert driver.state() == first

    driver.apply(HOSTS[:1])
    assert driver.state() != first
    driver.apply(HOSTS)
    assert driver.state() == first  # TPG LUN indexes come back the same


@pytest.mark.parametrize("underneath", [
    lambda w: w.mluns.__setitem__(TPG1 + (B1, 7), {**w.mluns[TPG1 + (B1, 7)], "write_protect": True}),
    lambda w: w.sos[("block", so_name(driver_for(w), 4))].__setitem__("wwn", "CHANGED"),
    lambda w: w.acls.discard(TPG1 + (A2,)) or [w.mluns.pop(k) for k in list(w.mluns) if k[3] == A2],
    lambda w: w.tpgs[TPG1]["attrib"].__setitem__("generate_node_acls", "1"),
    lambda w: w.tpgs[TPG1].__setitem__("enable", False),
    lambda w: w.portals.clear(),
    lambda w: w.targets.clear() or w.tpgs.clear() or w.acls.clear() or w.mluns.clear() or w.luns.clear(),
], ids=["write-protect", "serial", "acl", "demo-mode", "disabled", "portal", "target-gone"])
def test_state_sees_changes_made_underneath(lio, driver, underneath):
    driver.apply(HOSTS)
    first = driver.state()
    underneath(lio)
    assert driver.state() != first
    driver.apply(HOSTS)
    assert driver.state() == first


def test_state_of_an_empty_configuration(lio, driver):
    add_foreign(lio)
    assert driver.state() == driver_for(lio).state()
    assert driver.state()[0] is None
    driver.apply([])
    assert driver.state()[0] == BASE


# -- removing and moving ---------------------------------------------------------------------
def test_removing_a_host_removes_its_acls_and_now_unused_storage_objects(lio, driver):
    driver.apply(HOSTS)
    n = len(lio.log)
    driver.apply([HOSTS[1]])
    # Host 1's ACLs and volumes 1 and 3 go; volume 2 stays, shared with host 2.
    assert lio.acls == {TPG1 + (B1,)}
    assert set(lio.sos) == {("block", so_name(driver, 2)), ("block", so_name(driver, 4))}
    assert lio.view()[B1] == {
        0: ("block", so_name(driver, 2), "/dev/zvol/tank/v2", "VSNAP-000002", False),
        7: ("block", so_name(driver, 4), "/dev/zvol/tank/v4", "VSNAP-000004", False)}
    changes = lio.changes(n)
    assert all(op == "delete" for op, _, _ in changes)
    # Access before objects: both ACLs (with their mapped LUNs) before any TPG LUN, and
    # each TPG LUN before its storage object.
    kinds = [kind for _, kind, _ in changes]
    assert kinds.index("lun") > max(i for i, k in enumerate(kinds) if k == "acl")
    assert kinds.index("storage_object") > max(i for i, k in enumerate(kinds) if k == "lun")
    assert sorted(key for _, kind, key in changes if kind == "storage_object") == [
        ("block", so_name(driver, 1)), ("fileio", so_name(driver, 3))]


def test_removing_a_lun_keeps_the_other_tpg_luns_and_reuses_the_lowest_index(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(1, 2), vol(2, 3)))])
    assert lio.tpg_luns() == {0: ("block", so_name(driver, 1)), 1: ("block", so_name(driver, 2)),
                              2: ("block", so_name(driver, 3))}
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(2, 3)))])
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(2, 3), vol(1, 4), vol(3, 5)))])
    assert lio.tpg_luns() == {0: ("block", so_name(driver, 1)), 1: ("block", so_name(driver, 4)),
                              2: ("block", so_name(driver, 3)), 3: ("block", so_name(driver, 5))}


def test_changed_initiator_moves_the_acl(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    n = len(lio.log)
    driver.apply([HostExport(1, (A2,), (vol(0, 1),))])
    assert lio.acls == {TPG1 + (A2,)}
    assert lio.view() == {A2: {0: ("block", so_name(driver, 1), "/dev/zvol/tank/v1",
                                   "VSNAP-000001", False)}}
    assert [(op, kind) for op, kind, _ in lio.changes(n)] == [
        ("delete", "mapped_lun"), ("delete", "acl"), ("create", "acl"), ("create", "mapped_lun")]


def test_changed_lun_number_remaps_without_touching_the_backstore(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    n = len(lio.log)
    driver.apply([HostExport(1, (A1,), (vol(4, 1),))])
    assert [(op, kind) for op, kind, _ in lio.changes(n)] == [
        ("delete", "mapped_lun"), ("create", "mapped_lun")]
    assert set(lio.view()[A1]) == {4}


def test_read_only_change_recreates_only_that_mapped_lun(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),)), HostExport(2, (B1,), (vol(0, 1),))])
    n = len(lio.log)
    driver.apply([HostExport(1, (A1,), (vol(0, 1, read_only=True),)),
                  HostExport(2, (B1,), (vol(0, 1),))])
    assert lio.changes(n) == [("delete", "mapped_lun", TPG1 + (A1, 0)),
                              ("create", "mapped_lun", TPG1 + (A1, 0, 0, True))]
    assert lio.view()[A1][0][4] is True and lio.view()[B1][0][4] is False


# -- re-creating -----------------------------------------------------------------------------
def _recreated(lio: FakeLio, n: int) -> list[tuple[str, str]]:
    return [(op, kind) for op, kind, _ in lio.changes(n)]


RECREATE = [("delete", "mapped_lun"), ("delete", "mapped_lun"), ("delete", "lun"),
            ("delete", "storage_object"), ("create", "storage_object"), ("create", "lun"),
            ("create", "mapped_lun"), ("create", "mapped_lun")]


def test_refresh_recreates_the_volume_for_every_host(lio, driver):
    hosts = [HostExport(1, (A1,), (vol(0, 1), vol(1, 2))), HostExport(2, (B1,), (vol(3, 1),))]
    driver.apply(hosts)
    view, n = lio.view(), len(lio.log)
    driver.apply(hosts, refresh=frozenset({1}))
    assert _recreated(lio, n) == RECREATE
    # Volume 2 (TPG LUN 1, host 1's LUN 1) is left alone.
    assert not any(key[:5] == TPG1 + (A1, 1) or key == TPG1 + (1,) or so_name(driver, 2) in key
                   for _, _, key in lio.changes(n))
    assert lio.view() == view


@pytest.mark.parametrize("changed", [
    vol(0, 1, serial="NEW-SERIAL"),
    vol(0, 1, path="/dev/zvol/tank/v9"),
    vol(0, 1, path="/srv/vsnap/f1.img"),  # block -> fileio
], ids=["serial", "path", "kind"])
def test_changed_backing_recreates_storage_object_lun_and_mappings(lio, driver, changed):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),)), HostExport(2, (B1,), (vol(2, 1),))])
    n = len(lio.log)
    driver.apply([HostExport(1, (A1,), (changed,)),
                  HostExport(2, (B1,), (LunExport(2, 1, changed.path, changed.serial, changed.size),))])
    assert _recreated(lio, n) == RECREATE
    (so,) = lio.sos.values()
    assert (so["dev"], so["wwn"]) == (changed.path, changed.serial)
    assert lio.view()[A1][0][2:4] == lio.view()[B1][2][2:4] == (changed.path, changed.serial)


def test_size_matters_for_files_only(lio, driver):
    file_lun, block_lun = vol(0, 1, path="/srv/vsnap/f1.img"), vol(1, 2)
    driver.apply([HostExport(1, (A1,), (file_lun, block_lun))])
    n = len(lio.log)
    # A block device's size is the device's own: a new size changes nothing.
    driver.apply([HostExport(1, (A1,), (file_lun, vol(1, 2, size=2 * GIB)))])
    assert lio.changes(n) == []
    driver.apply([HostExport(1, (A1,), (vol(0, 1, path="/srv/vsnap/f1.img", size=2 * GIB),
                                        vol(1, 2, size=2 * GIB)))])
    assert [k for _, k, _ in lio.changes(n) if k == "storage_object"] == ["storage_object"] * 2
    assert lio.sos[("fileio", so_name(driver, 1))]["size"] == 2 * GIB


def test_missing_device_keeps_a_matching_storage_object_but_cannot_create_one(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    del lio.paths["/dev/zvol/tank/v1"]  # udev re-creating the node, say
    n = len(lio.log)
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    assert lio.changes(n) == []
    with pytest.raises(TargetError, match=r"/dev/zvol/tank/v1 \(volume 1\) does not exist"):
        driver.apply([HostExport(1, (A1,), (vol(0, 1),))], refresh=frozenset({1}))


def test_broken_and_stray_objects_in_the_owned_target_are_replaced(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(1, 2)))])
    lio.mluns[TPG1 + (A1, 1)]["tpg_lun"] = 77  # a mapping to a TPG LUN that is gone
    lio.sos[("block", "stray")] = {"dev": "/dev/sdz", "wwn": "S"}
    lio.luns[TPG1 + (5,)] = ("block", "stray")  # someone else's backstore in our target
    lio.acls.add(TPG1 + (B1,))  # an initiator nobody asked for
    lio.tpgs[("iscsi", BASE, 2)] = {"enable": True, "attrib": {**DEFAULT_TPG_ATTRIBUTES,
                                                         "generate_node_acls": "1"}}
    lio.tpgs[TPG1]["attrib"]["generate_node_acls"] = "1"  # demo mode: everyone sees everything
    n = len(lio.log)
    driver.apply([HostExport(1, (A1,), (vol(0, 1), vol(1, 2)))])
    # The demo-mode gate closes before anything else happens.
    assert lio.log[n] == ("set", "tpg_attribute", TPG1 + ("generate_node_acls", "0"))
    assert set(lio.tpgs) == {TPG1}
    assert lio.tpgs[TPG1]["attrib"]["generate_node_acls"] == "0"
    assert lio.acls == {TPG1 + (A1,)}
    assert lio.tpg_luns() == {0: ("block", so_name(driver, 1)), 1: ("block", so_name(driver, 2))}
    assert lio.mluns[TPG1 + (A1, 1)] == {"tpg_lun": 1, "write_protect": False}
    assert ("block", "stray") in lio.sos  # its backstore is not ours to delete


# -- what is not ours --------------------------------------------------------------------------
def test_foreign_targets_and_storage_objects_are_never_touched(lio, driver):
    add_foreign(lio)
    foreign = lio.snapshot()
    driver.apply(HOSTS)
    driver.apply(HOSTS[1:], refresh=frozenset({2}))
    driver.apply([])
    for old, new in zip(foreign, lio.snapshot()):
        if isinstance(old, dict):
            assert {k: new.get(k) for k in old} == old
        else:
            assert old <= new
    assert not any(re.search(r"other|data1|000000000000|loopback", str(key)) for _, _, key in lio.log)
    assert lio.log  # the driver did work meanwhile


def test_another_appliance_in_the_same_kernel_keeps_its_own(lio):
    one, two = driver_for(lio), driver_for(lio, "iqn.2024-01.com.example.vsnap:appliance2")
    assert one.so_prefix != two.so_prefix
    one.apply([HostExport(1, (A1,), (vol(0, 1),))])
    two.apply([HostExport(1, (B1,), (vol(0, 1),))])
    before, n = lio.snapshot(), len(lio.log)
    one.apply([HostExport(1, (A1,), (vol(0, 1),))])
    assert lio.changes(n) == [] and lio.snapshot() == before
    two.apply([])
    assert lio.view() == {A1: {0: ("block", so_name(one, 1), "/dev/zvol/tank/v1", "VSNAP-000001", False)}}
    assert lio.view(("iscsi", "iqn.2024-01.com.example.vsnap:appliance2", 1)) == {}
    assert set(lio.sos) == {("block", so_name(one, 1))}
    assert two.targets() == [TargetPort("iqn.2024-01.com.example.vsnap:appliance2", None)]


def test_storage_object_exported_elsewhere_is_not_deleted(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    add_foreign(lio)
    lio.luns[("iscsi", "iqn.2003-01.org.linux-iscsi.other:sn.1234", 1, 3)] = ("block", so_name(driver, 1))
    before, n = lio.snapshot(), len(lio.log)
    with pytest.raises(TargetError, match="also exported by iscsi target iqn.2003-01.org.linux-iscsi.other"):
        driver.apply([])
    assert lio.changes(n) == [] and lio.snapshot() == before


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, kind, message", [
    ("create", "storage_object", r"LIO: creating storage object vsnap-\w+-1 for /dev/zvol/tank/v1: boom"),
    ("create", "lun", "LIO: creating TPG LUN 0 for vsnap-"),
    ("create", "acl", f"LIO: creating the ACL of {A1}: boom"),
    ("create", "mapped_lun", f"LIO: mapping LUN 0 to {A1}: boom"),
    ("create", "target", f"LIO: creating target {BASE}: boom"),
    ("set", "tpg_attribute", "LIO: setting authentication of"),
    ("create", "portal", "LIO: adding portal 0.0.0.0:3260: boom"),
])
def test_rtslib_errors_become_target_errors(lio, driver, op, kind, message):
    lio.fail[(op, kind)] = lio.module.RTSLibError("boom")
    with pytest.raises(TargetError, match=message) as caught:
        driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    assert isinstance(caught.value.__cause__, lio.module.RTSLibError)


def test_kernel_refusals_become_target_errors(lio, driver):
    driver.apply([HostExport(1, (A1,), (vol(0, 1),))])
    lio.fail[("delete", "storage_object")] = OSError(16, "Device or resource busy")
    with pytest.raises(TargetError, match=r"deleting storage object block/vsnap-\w+-1: .*busy"):
        driver.apply([])
    lio.fail.clear()
    driver.apply([])  # and the next apply finishes the job
    assert lio.sos == {} and lio.acls == set()


def test_reading_errors_become_target_errors(lio, driver):
    def broken():
        raise lio.module.RTSLibError("configfs is not mounted")
    lio.module.RTSRoot = broken
    for call in (lambda: driver.apply([]), driver.state):
        with pytest.raises(TargetError, match="LIO: reading the configuration: configfs is not mounted"):
            call()


def test_path_that_is_neither_file_nor_block_device_is_refused(lio, driver):
    lio.paths["/dev/weird"] = "other"
    with pytest.raises(TargetError, match="neither a file nor a block device"):
        driver.apply([HostExport(1, (A1,), (vol(0, 1, path="/dev/weird"),))])
    assert lio.sos == {} and lio.mluns == {}


@pytest.mark.parametrize("hosts, message", [
    ([HostExport(1, (A1,), (vol(0, 1), vol(0, 2)))], "host 1 has LUN 0 twice"),
    ([HostExport(1, (A1,), (vol(256, 1),))], "outside 0..255"),
    ([HostExport(1, (A1,), (vol(-1, 1),))], "outside 0..255"),
    ([HostExport(1, (A1,), (vol(0, 1),)), HostExport(2, (B1,), (vol(0, 1, serial="X"),))],
     "volume 1 is exported with different"),
    ([HostExport(1, ("iqn.2024-01.com.example:bad_name",), ())], "not a valid iSCSI initiator name"),
    ([HostExport(1, ("host-a",), ())], "not a valid iSCSI initiator name"),
    ([HostExport(1, (A1,), (vol(0, 1, serial=""),))], "cannot be a SCSI unit serial"),
    ([HostExport(1, (A1,), (vol(0, 1, serial=" X"),))], "cannot be a SCSI unit serial"),
    ([HostExport(1, (A1,), (vol(0, 1, path="/dev/zvol/a,b"),))], "cannot be a LIO backstore path"),
    ([HostExport(1, (A1,), (vol(0, 1, path="relative"),))], "cannot be a LIO backstore path"),
])
def test_bad_requests_fail_before_any_change(lio, driver, hosts, message):
    driver.apply([HostExport(9, (B1,), (vol(0, 9),))])
    before, n = lio.snapshot(), len(lio.log)
    with pytest.raises(TargetError, match=message):
        driver.apply(hosts)
    assert lio.changes(n) == [] and lio.snapshot() == before


def test_eui_initiators_are_accepted_and_normalized(lio, driver):
    driver.apply([HostExport(1, ("EUI.0123456789ABCDEF",), (vol(0, 1),))])
    assert lio.acls == {TPG1 + ("eui.0123456789abcdef",)}
    assert normalize_wwn(" naa.5001405A:BC-DEF012 ") == "naa.5001405abcdef012"


# -- the rest ----------------------------------------------------------------------------------
def test_targets_lists_the_owned_target_only(lio, driver):
    add_foreign(lio)
    assert driver.targets() == []
    driver.apply([])
    assert driver.targets() == [TargetPort(BASE, None)]


def test_backstore_cache_is_forgotten_before_each_apply(lio, driver):
    lio.bs_cache["fileio/gone"] = 4  # stale: that backstore was deleted by someone else
    driver.apply([])
    assert lio.bs_cache == {}


def test_storage_object_names_are_stable_and_per_appliance():
    one = LioDriver(BASE, rtslib=FakeLio().module)
    assert one.so_name(12) == f"vsnap-{one.tag}-12"
    assert re.fullmatch(r"[0-9a-f]{12}", one.tag)
    assert LioDriver(BASE.upper().replace("IQN.", "iqn."), rtslib=FakeLio().module).tag == one.tag
    assert LioDriver(BASE + "x", rtslib=FakeLio().module).tag != one.tag
    assert one._volume_id(one.so_name(12)) == 12
    assert one._volume_id(one.so_name(12) + "x") is None
    assert one._volume_id(f"{one.so_prefix}012") is None


def test_path_kind(tmp_path):
    f = tmp_path / "f.img"
    f.write_bytes(b"")
    assert path_kind(str(f)) == "file"
    assert path_kind(str(tmp_path)) == "other"
    assert path_kind(str(tmp_path / "nope")) == "missing"
    assert path_kind(str(f / "below-a-file")) == "missing"
