"""Where the vsnap command finds the appliance and the credentials: flags, then the
environment, then a config file that only its owner may read."""
from __future__ import annotations

import configparser
import getpass
import os
import stat
import sys
from dataclasses import dataclass

from .client import ConfigError

DEFAULT_CONFIG = "/etc/vsnap/cli.conf"
CONFIG_KEYS = ("url", "user", "password", "ca")


@dataclass
class Connection:
    url: str
    user: str
    password: str
    ca: str | None
    insecure: bool


def default_url(environ) -> str:
    return f"https://127.0.0.1:{environ.get('VSNAP_PORT') or 8900}"


def default_ca(environ) -> str | None:
    """The appliance's own certificate, when this account can read it (root can)."""
    path = os.path.join(environ.get("VSNAP_STATE") or "/var/lib/vsnap", "tls", "vsnap.crt")
    return path if os.access(path, os.R_OK) else None


def read_config(path: str, *, required: bool) -> tuple[dict, str | None]:
    """-> (settings, a note when the file exists but this account cannot read it).

    The file may hold a password: it is refused when anyone but its owner may read or write it,
    or when its owner is neither root nor the account running the command."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} (VSNAP_CLI_CONFIG) does not exist") from None
        return {}, None
    except PermissionError:
        if required:
            raise ConfigError(f"cannot read config file {path}: permission denied") from None
        return {}, f"{path} exists but this account cannot read it (run as root?)"
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"config file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"config file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it may hold a password, "
                f"so only its owner may read it. Fix with: chmod 600 {path}")
        if st.st_uid not in (0, os.getuid()):
            raise ConfigError(f"config file {path} belongs to uid {st.st_uid}, not to root or to you: "
                              "refusing to use it")
        parser = configparser.RawConfigParser()  # raw: a % in a password is just a %
        try:
            parser.read_file(f, source=path)
        except configparser.Error as exc:
            raise ConfigError(f"config file {path} is not valid INI: {exc}") from None
    if not parser.has_section("vsnap"):
        raise ConfigError(f"config file {path} has no [vsnap] section")
    values = dict(parser.items("vsnap"))
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(CONFIG_KEYS)})")
    return {k: v.strip() for k, v in values.items() if v.strip()}, None


def resolve(args, environ=None, *, prompt=None, interactive: bool | None = None) -> Connection:
    """Each setting from the first place that has it: flags, environment, config file.
    A password from the config file is used only with the config file's user."""
    environ = os.environ if environ is None else environ
    config_path = environ.get("VSNAP_CLI_CONFIG")
    config, note = read_config(config_path or DEFAULT_CONFIG, required=bool(config_path))

    def pick(flag, env_name, key):
        for value in (flag, environ.get(env_name), config.get(key)):
            if value:
                return value
        return None

    url = pick(getattr(args, "url", None), "VSNAP_URL", "url") or default_url(environ)
    if not url.startswith(("https://", "http://")):
        url = "https://" + url
    user = pick(getattr(args, "user", None), "VSNAP_USER", "user")
    password = getattr(args, "password", None) or environ.get("VSNAP_PASSWORD")
    if not password and config.get("password") and config.get("user", user) == user:
        password = config["password"]
    where = f" ({note})" if note else ""
    if not user:
        raise ConfigError("no user: give --user, set VSNAP_USER, or set user= in "
                          f"{config_path or DEFAULT_CONFIG}{where}")
    if not password:
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise ConfigError(f"no password for {user}: set VSNAP_PASSWORD, or password= in "
                              f"{config_path or DEFAULT_CONFIG}{where}")
        password = (prompt or getpass.getpass)(f"Password for {user} at {url}: ")
        if not password:
            raise ConfigError("no password given")
    ca = pick(getattr(args, "ca", None), "VSNAP_CA", "ca") or default_ca(environ)
    return Connection(url=url, user=user, password=password, ca=ca,
                      insecure=bool(getattr(args, "insecure", False)))
