"""The bootstrap writes the vsnap command's root-only login when it knows the admin's password,
in a form the command reads; a file it did not write is never touched."""
from __future__ import annotations

import stat

from vsnap.bootstrap import ensure_cli_config
from vsnap.cli.settings import read_config
from vsnap.config import Settings


def _settings(tmp_path) -> Settings:
    return Settings.from_env({"VSNAP_STATE": str(tmp_path / "state"), "VSNAP_PORT": "8911"})


def test_written_root_only_and_read_by_the_command(tmp_path):
    path = tmp_path / "etc" / "vsnap" / "cli.conf"
    ensure_cli_config(_settings(tmp_path), "pa%ss word", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values, note = read_config(str(path), required=True)
    assert note is None and values == {"url": "https://127.0.0.1:8911", "user": "vsnapadmin",
                                       "password": "pa%ss word", "ca": str(tmp_path / "state" / "tls" / "vsnap.crt")}
    ensure_cli_config(_settings(tmp_path), "new-password", path)  # ours: follows a new password
    assert read_config(str(path), required=True)[0]["password"] == "new-password"
    assert [p.name for p in path.parent.iterdir()] == ["cli.conf"]  # no temp file left


def test_not_written_without_a_password_nor_over_someone_elses(tmp_path):
    path = tmp_path / "cli.conf"
    ensure_cli_config(_settings(tmp_path), None, path)
    assert not path.exists()
    path.write_text("[vsnap]\nuser = monitor\npassword = theirs\n")
    ensure_cli_config(_settings(tmp_path), "ours", path)
    assert path.read_text() == "[vsnap]\nuser = monitor\npassword = theirs\n"


