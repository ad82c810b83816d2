"""gunicorn settings for `make run`: HTTPS on VSNAP_PORT, TLS 1.2+ with strong ciphers only."""
import os
import shutil
import socket
import ssl

from gunicorn import util as _gunicorn_util

from vsnap.config import Settings
from vsnap.http_errors import write_error as _json_write_error

_settings = Settings.from_env()

# What gunicorn refuses itself (a URL over limit_request_line: 414, headers too large: 431, a
# malformed request: 400) is answered with the API's error object, not gunicorn's HTML page.
_gunicorn_util.write_error = _json_write_error

# Request metrics are counted in every worker and summed at scrape time (prometheus_client's
# multiprocess mode): the workers of this server write them to a directory of its own (other
# servers may share the state directory), cleared when it starts and removed when it stops.
_METRICS_ROOT = _settings.state_dir / "metrics"
METRICS_DIR = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_METRICS_ROOT / f"server-{os.getpid()}"))


# gunicorn's control socket (for `gunicornc -s PATH`) is the appliance's own, in its state
# directory (gunicorn's default, ~/.gunicorn/gunicorn.ctl, is one path for every server of the
# user: each start took it over and each stop removed it from under the others). The directory
# is root's only; VSNAP_CONTROL_SOCKET (or --control-socket) puts it elsewhere.
_RUN_DIR = _settings.state_dir / "run"
control_socket = os.environ.get("VSNAP_CONTROL_SOCKET") or str(_RUN_DIR / "gunicorn.ctl")


def _private_dir(path) -> None:
    """`path` as a directory only its owner may enter (made, or its mode put right)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if not os.path.islink(path):
        os.chmod(path, 0o700)


def _answers(path: str) -> bool:
    """Whether a live server listens on the unix socket at `path` (not a stale file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


def _own_control_socket(server) -> None:
    """A second server of the same state directory (tests run one beside the main one) takes
    a socket of its own, by its pid, rather than the first one's (gunicorn replaces whatever
    is at the path when it starts and removes it when it stops)."""
    cfg = server.cfg
    if cfg.control_socket_disable:
        return
    path = cfg.control_socket
    if os.path.dirname(path) == str(_RUN_DIR):
        _private_dir(_RUN_DIR)
        for old in _RUN_DIR.glob("gunicorn-*.ctl"):  # left by such servers that were killed
            pid = old.stem.removeprefix("gunicorn-")
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                old.unlink(missing_ok=True)
    if os.path.exists(path) and _answers(path):
        stem, ext = os.path.splitext(path)
        cfg.set("control_socket", f"{stem}-{os.getpid()}{ext}")
        server.log.info("control socket %s belongs to another live server: using %s",
                        path, cfg.control_socket)


def on_starting(server):
    _own_control_socket(server)
    if _METRICS_ROOT.is_dir():  # left by servers that were killed
        for old in _METRICS_ROOT.glob("server-*"):
            pid = old.name.removeprefix("server-")
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    os.makedirs(METRICS_DIR, mode=0o700, exist_ok=True)


def when_ready(server):
    _share_unix_socket(bind, os.environ.get("VSNAP_SOCKET_GROUP"))


def _share_unix_socket(address: str, group: str | None) -> None:
    """The API's unix socket (production: unix:/run/vsnap/api.sock, behind nginx) belongs to
    `group` (nginx's workers' group, www-data) and is closed to everyone else. Done here, once
    gunicorn has made it: systemd resets a RuntimeDirectory's owner and mode each time it
    starts a command of the unit (ExecStartPre, ExecStart, ExecReload), so a chgrp of the
    directory in the unit does not last."""
    if not group or not address.startswith("unix:"):
        return
    import grp
    path = address.removeprefix("unix:")
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o660)


def on_exit(server):
    shutil.rmtree(METRICS_DIR, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)

bind = os.environ.get("VSNAP_BIND", f"0.0.0.0:{_settings.port}")
worker_class = "gthread"
workers = int(os.environ.get("VSNAP_WORKERS", "2"))
threads = int(os.environ.get("VSNAP_THREADS", "8"))
timeout = 600  # storage calls can be slow; the command runner has its own timeouts
graceful_timeout = 30
accesslog = os.environ.get("VSNAP_ACCESS_LOG")  # our own request line (vsnap.api) has more: id, user, duration
errorlog = "-"
if os.environ.get("VSNAP_PLAIN_HTTP") != "1":  # nginx in front terminates TLS in production
    certfile = str(_settings.tls_cert)
    keyfile = str(_settings.tls_key)


def ssl_context(conf, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS:!RC4:!3DES")
    return context
