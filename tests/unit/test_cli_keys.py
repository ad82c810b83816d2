"""`vsnap key export|import` with a fake zfs (subprocess) and a temp state directory; and the
key files they and the pool service share (KeyFiles)."""
from __future__ import annotations

import subprocess

import pytest

import vsnap.cli.keys as keys_mod
from vsnap.cli import main
from vsnap.drivers.keys import KeyFiles

KEY = bytes(range(32))


class FakeZfs:
    """`zfs` as subprocess.run would run it: answers by subcommand; every argv recorded."""

    def __init__(self):
        self.props: dict[str, dict[str, str]] = {}
        self.right_key = KEY
        self.argvs: list[list[str]] = []

    def __call__(self, argv, capture_output, text, timeout):
        assert isinstance(argv, list) and argv[0] == "zfs"
        self.argvs.append(argv)
        verb = argv[1]
        if verb == "get":
            props, dataset = argv[-2].split(","), argv[-1]
            if dataset not in self.props:
                return subprocess.CompletedProcess(argv, 1, "", f"cannot open '{dataset}': dataset does not exist\n")
            have = self.props[dataset]
            return subprocess.CompletedProcess(argv, 0, "".join(f"{p}\t{have.get(p, '-')}\n" for p in props), "")
        if verb == "load-key":
            location = argv[argv.index("-L") + 1]
            given = open(location.removeprefix("file://"), "rb").read()
            if given != self.right_key:
                return subprocess.CompletedProcess(argv, 255, "", "Key load error: Incorrect key provided\n")
            if "-n" not in argv:
                self.props[argv[-1]]["keystatus"] = "available"
            return subprocess.CompletedProcess(argv, 0, "", "")
        if verb == "set":
            prop, _, value = argv[2].partition("=")
            self.props[argv[3]][prop] = value
            return subprocess.CompletedProcess(argv, 0, "", "")
        if verb == "mount":
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(argv)


@pytest.fixture
def box(tmp_path, monkeypatch):
    monkeypatch.setenv("VSNAP_STATE", str(tmp_path))
    monkeypatch.setattr(keys_mod.os, "geteuid", lambda: 0)
    zfs = FakeZfs()
    monkeypatch.setattr(keys_mod.subprocess, "run", zfs)
    files = KeyFiles(tmp_path)
    return zfs, files, tmp_path


def _encrypted_pool(zfs, files):
    path = files.dir / "pool-1.key"
    files.write(path, KEY)
    zfs.props["tank"] = {"encryption": "aes-256-gcm", "keylocation": f"file://{path}"}
    return path


def test_key_files_are_root_only_and_never_replaced(tmp_path):
    files = KeyFiles(tmp_path / "state")
    path = files.new_path("pool")
    files.create(path)
    assert len(path.read_bytes()) == 32
    assert path.stat().st_mode & 0o777 == 0o600 and files.dir.stat().st_mode & 0o777 == 0o700
    with pytest.raises(FileExistsError):
        files.create(path)
    assert files.new_path("pool") != path
    with pytest.raises(ValueError):
        files.write(files.new_path("imported"), b"short")
    assert files.path_of(files.location(path)) == path
    for other in ("prompt", "none", "file:///etc/passwd", f"file://{files.dir}/../x.key", None, ""):
        assert files.path_of(other) is None, other
    assert files.remove(tmp_path / "elsewhere.key") is False


def test_export_prints_the_key_in_hex_or_writes_a_new_root_only_file(box, capsys):
    zfs, files, tmp_path = box
    _encrypted_pool(zfs, files)
    assert main(["key", "export", "tank"]) == 0
    assert capsys.readouterr().out == KEY.hex() + "\n"
    out = tmp_path / "exported.key"
    assert main(["key", "export", "tank", str(out)]) == 0
    assert out.read_text() == KEY.hex() + "\n" and out.stat().st_mode & 0o777 == 0o600
    assert main(["key", "export", "tank", str(out)]) == 2  # never over an existing file
    assert "exists" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_give(box, capsys, monkeypatch):
    zfs, files, _ = box
    zfs.props["plain"] = {"encryption": "off", "keylocation": "none"}
    zfs.props["foreign"] = {"encryption": "aes-256-gcm", "keylocation": "file:///root/their.key"}
    assert main(["key", "export", "plain"]) == 1
    assert "not encrypted" in capsys.readouterr().err
    assert main(["key", "export", "foreign"]) == 1
    assert "not one this appliance keeps" in capsys.readouterr().err
    assert main(["key", "export", "tank/vol"]) == 2
    assert main(["key", "export", "a;rm -rf /"]) == 2
    assert all(a[-1] in ("plain", "foreign") for a in zfs.argvs)  # nothing odd reached zfs
    monkeypatch.setattr(keys_mod.os, "geteuid", lambda: 1000)
    assert main(["key", "export", "plain"]) == 2
    assert "root only" in capsys.readouterr().err


def test_import_loads_the_key_keeps_it_root_only_and_points_the_replica_at_it(box, monkeypatch, tmp_path):
    zfs, files, _ = box
    zfs.props["pb/v_replica"] = {"encryption": "aes-256-gcm", "encryptionroot": "pb/v_replica",
                                 "keystatus": "unavailable", "type": "filesystem", "keylocation": "prompt"}
    given = tmp_path / "given.key"
    given.write_text(KEY.hex() + "\n")
    assert main(["key", "import", "pb/v_replica", str(given)]) == 0
    replica = zfs.props["pb/v_replica"]
    assert replica["keystatus"] == "available"
    kept = files.path_of(replica["keylocation"])
    assert kept is not None and kept.read_bytes() == KEY and kept.stat().st_mode & 0o777 == 0o600
    assert ["zfs", "mount", "pb/v_replica"] in zfs.argvs


def test_import_of_a_wrong_key_changes_nothing(box, tmp_path, capsys):
    zfs, files, _ = box
    zfs.props["pb/v_replica"] = {"encryption": "aes-256-gcm", "encryptionroot": "pb/v_replica",
                                 "keystatus": "unavailable", "type": "filesystem", "keylocation": "prompt"}
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    assert main(["key", "import", "pb/v_replica", str(wrong)]) == 1
    assert "does not open" in capsys.readouterr().err
    assert zfs.props["pb/v_replica"]["keylocation"] == "prompt"
    assert not files.dir.exists() or list(files.dir.iterdir()) == []  # the key given is not kept
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    assert main(["key", "import", "pb/v_replica", str(garbage)]) == 2
