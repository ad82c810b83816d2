"""Prepares a machine to serve vsnap (used by `make run`, `make test` and `make install`):
state directory, appliance id, TLS certificate, PAM service, admin account, database schema.

Idempotent: each step checks what exists and only makes what is missing.
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import secrets
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from .cli.settings import DEFAULT_CONFIG as CLI_CONFIG
from .config import Settings
from .services.system import load_or_create_system_id

ROOT = Path(__file__).resolve().parent.parent
PAM_FILE = Path("/etc/pam.d/vsnap")
# Our own PAM stack: password check and account validity only. `nodelay` because the server
# throttles failures itself; PAM's fixed delay would only tie up a worker thread.
PAM_STACK = """# vsnap API and SMB logins (written by vsnap; safe to edit)
auth     required pam_unix.so nodelay
account  required pam_unix.so
"""


def say(message: str) -> None:
    print(f"vsnap-bootstrap: {message}", flush=True)


def ensure_state_dir(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.state_dir, 0o700)  # keys, database and certificates live here
    for private in (settings.ssh_dir, settings.tls_cert.parent):  # and the directories of keys
        if private.is_dir():
            os.chmod(private, 0o700)


def ensure_tls(settings: Settings) -> None:
    cert, key = settings.tls_cert, settings.tls_key
    if cert.exists() and key.exists():
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(cert.parent, 0o700)
    host = os.uname().nodename
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-nodes", "-days", "3650",
         "-subj", f"/CN={host}/O=vsnap", "-addext", f"subjectAltName=DNS:{host},DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    os.chmod(key, 0o600)
    say(f"made a self-signed TLS certificate: {cert}")


def ensure_pam_service() -> None:
    if not PAM_FILE.exists():
        PAM_FILE.write_text(PAM_STACK)
        say(f"installed PAM service {PAM_FILE}")


def ensure_group(settings: Settings) -> None:
    """Membership in this group is the vsnap_admin role."""
    try:
        grp.getgrnam(settings.admin_group)
    except KeyError:
        subprocess.run(["groupadd", "--system", settings.admin_group], check=True)
        say(f"created group {settings.admin_group}")


def ensure_account(settings: Settings, password: str | None) -> str | None:
    """Returns the password it set, if it set one."""
    group = settings.admin_group
    user = settings.admin_user
    try:
        pwd.getpwnam(user)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin",
                        "--groups", group, user], check=True)
        created = True
        say(f"created account {user} in group {group}")
    if user not in grp.getgrnam(group).gr_mem and pwd.getpwnam(user).pw_gid != grp.getgrnam(group).gr_gid:
        subprocess.run(["usermod", "--append", "--groups", group, user], check=True)
    if password:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        return password
    if created:
        generated = secrets.token_urlsafe(12)
        subprocess.run(["chpasswd"], input=f"{user}:{generated}\n", text=True, check=True)
        say(f"the password of {user} is: {generated}  (shown once; set VSNAP_ADMIN_PASSWORD to choose it)")
        return generated
    return None


def ensure_smb_password(settings: Settings, password: str | None) -> None:
    """SMB logins use the same accounts; Samba keeps its own password entries. The server
    refreshes an entry at each API login with a changed password; this gives the admin
    account its entry from the start when its password is known here."""
    if password and settings.smb_conf_file.exists():
        subprocess.run(["smbpasswd", "-c", str(settings.smb_conf_file), "-s", "-a", settings.admin_user],
                       input=f"{password}\n{password}\n", text=True, capture_output=True, check=False)


CLI_CONFIG_MARK = "# Written by vsnap-bootstrap"


def ensure_cli_config(settings: Settings, password: str | None, path: Path | None = None) -> None:
    """The vsnap command's login for root (`sudo vsnap ...` drops the environment, so monitoring
    that runs it over SSH needs it in a file): written, root-only, when this set-up knows the
    admin's password. A file someone else wrote is left as it is."""
    path = path or Path(os.environ.get("VSNAP_CLI_CONFIG") or CLI_CONFIG)
    if not password:
        return
    try:
        if path.exists() and not path.read_text(encoding="utf-8").startswith(CLI_CONFIG_MARK):
            say(f"{path} exists and was not written here: left as it is")
            return
    except OSError as exc:
        say(f"{path} cannot be read ({exc.strerror}): left as it is")
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    text = (f"{CLI_CONFIG_MARK}: the vsnap command's login on this appliance (root only).\n"
            "[vsnap]\n"
            f"url = https://127.0.0.1:{settings.port}\n"
            f"user = {settings.admin_user}\n"
            f"password = {password}\n"
            f"ca = {settings.tls_cert}\n")
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temp, path)
    say(f"wrote {path}: `vsnap` logs in as {settings.admin_user} when run as root")


def migrate(settings: Settings) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = settings.database_url
    command.upgrade(config, "head")
    os.chmod(settings.database_path, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-account", action="store_true", help="skip the admin account step")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    ensure_state_dir(settings)
    load_or_create_system_id(settings.system_id_file)
    ensure_tls(settings)
    ensure_pam_service()
    ensure_group(settings)
    if not args.no_account:
        password = ensure_account(settings, os.environ.get("VSNAP_ADMIN_PASSWORD") or None)
        ensure_smb_password(settings, password)
        ensure_cli_config(settings, password)
    migrate(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
