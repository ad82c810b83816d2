"""Installed package versions (dpkg) and the OS release."""
from __future__ import annotations

from pathlib import Path

from .runner import Runner


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


class PackageDriver:
    def __init__(self, runner: Runner, etc: Path = Path("/etc")):
        self.runner = runner
        self.etc = etc

    def versions(self, names: list[str]) -> dict[str, str | None]:
        """Installed version of each Debian package, None where it is not installed."""
        result = self.runner.run(
            ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n", *names],
            check=False)
        found: dict[str, str | None] = {name: None for name in names}
        for line in result.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].startswith("ii"):
                found[parts[0].split(":")[0]] = parts[2]
        return found

    def os_release(self) -> tuple[str | None, str | None]:
        try:
            info = parse_os_release((self.etc / "os-release").read_text())
        except OSError:
            return None, None
        version = info.get("VERSION_ID")
        if info.get("ID") == "debian":
            try:  # Debian's point release ("12.8") is more precise than VERSION_ID ("12");
                # testing/sid hold a codename there ("trixie/sid"), which is no version.
                point = (self.etc / "debian_version").read_text().strip()
                if point[:1].isdigit():
                    version = point
            except OSError:
                pass
        return info.get("NAME"), version
