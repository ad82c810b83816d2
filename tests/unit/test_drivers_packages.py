"""PackageDriver: dpkg versions and the OS release."""
from __future__ import annotations

from vsnap.drivers.packages import PackageDriver, parse_os_release

NAMES = ["nfs-ganesha", "nfs-kernel-server", "nginx", "samba"]


def test_versions_installed_vs_not(fake_runner, tmp_path):
    fake_runner.on(["dpkg-query"], returncode=1,
                   stdout="nfs-ganesha\tii \t5.7-1\n"
                          "nfs-kernel-server\tun \t\n"
                          "nginx\tii \t1.22.1-9+deb12u1\n"
                          "samba\trc \t2:4.17.12+dfsg-0+deb12u1\n",
                   stderr="dpkg-query: no packages found matching foo\n")
    versions = PackageDriver(fake_runner, etc=tmp_path).versions(NAMES)
    assert versions == {
        "nfs-ganesha": "5.7-1",
        "nfs-kernel-server": None,  # known to dpkg, never installed
        "nginx": "1.22.1-9+deb12u1",
        "samba": None,  # removed, only its config files remain
    }
    [call] = fake_runner.calls
    assert call["argv"] == ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n",
                            *NAMES]
    assert call["check"] is False  # dpkg-query exits 1 when any name is unknown


def test_versions_nothing_installed(fake_runner, tmp_path):
    fake_runner.on(["dpkg-query"], returncode=1,
                   stderr="dpkg-query: no packages found matching nginx\n")
    assert PackageDriver(fake_runner, etc=tmp_path).versions(["nginx"]) == {"nginx": None}


def test_versions_strips_architecture_qualifier(fake_runner, tmp_path):
    fake_runner.on(["dpkg-query"], stdout="samba:amd64\tii \t2:4.17.12\n")
    assert PackageDriver(fake_runner, etc=tmp_path).versions(["samba"]) == {"samba": "2:4.17.12"}


OS_RELEASE_DEBIAN = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support?lang=en&x=1"
"""


def test_parse_os_release():
    info = parse_os_release(OS_RELEASE_DEBIAN + "\n# a comment line\n")
    assert info["NAME"] == "Debian GNU/Linux"
    assert info["VERSION_ID"] == "12"
    assert info["VERSION_CODENAME"] == "bookworm"
    assert info["SUPPORT_URL"] == "https://www.debian.org/support?lang=en&x=1"
    assert info["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert parse_os_release("") == {}


def test_os_release_prefers_debian_point_release(fake_runner, tmp_path):
    (tmp_path / "os-release").write_text(OS_RELEASE_DEBIAN)
    (tmp_path / "debian_version").write_text("12.8\n")
    assert PackageDriver(fake_runner, etc=tmp_path).os_release() == ("Debian GNU/Linux", "12.8")
    assert fake_runner.calls == []


def test_os_release_without_debian_version(fake_runner, tmp_path):
    (tmp_path / "os-release").write_text(OS_RELEASE_DEBIAN)
    assert PackageDriver(fake_runner, etc=tmp_path).os_release() == ("Debian GNU/Linux", "12")
    (tmp_path / "debian_version").write_text("\n")  # empty: fall back to VERSION_ID
    assert PackageDriver(fake_runner, etc=tmp_path).os_release() == ("Debian GNU/Linux", "12")


def test_os_release_missing(fake_runner, tmp_path):
    assert PackageDriver(fake_runner, etc=tmp_path).os_release() == (None, None)


def test_os_release_on_ubuntu_is_not_the_debian_codename(fake_runner, tmp_path):
    (tmp_path / "os-release").write_text(
        'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
        'VERSION="24.04.1 LTS (Noble Numbat)"\nID=ubuntu\nID_LIKE=debian\n')
    (tmp_path / "debian_version").write_text("trixie/sid\n")
    assert PackageDriver(fake_runner, etc=tmp_path).os_release() == ("Ubuntu", "24.04")
