"""The shipped nginx site (nginx/vsnap.conf) in front of a real server on a unix socket, the
way `make install` and systemd/vsnap-api.service set them up: TLS 1.2+ only, logins passed
through, bodies over 1 MiB refused, the client address taken from nginx and nothing else.

The site is rendered into a temporary directory by replacing, in its directives (comments are
left alone), the production values its header lists: the socket, the certificate and key
(here the test appliance's), and the port (here a free one on 127.0.0.1; the IPv6 listener is
dropped). A main nginx.conf of the test's own includes it, with the pid file, logs and
temporary directories in the same directory, so nothing of the machine's nginx is used.
"""
from __future__ import annotations

import base64
import grp
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from .appliance import GUNICORN, ROOT
from .conftest import SSH_PORT, STATE

SITE = ROOT / "nginx" / "vsnap.conf"
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(path, os.X_OK)), None)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx): nginx/vsnap.conf cannot be checked")

# Production values in nginx/vsnap.conf, replaced verbatim (see its header).
PROD_SOCKET = "unix:/run/vsnap/api.sock"
PROD_CERT = "/var/lib/vsnap/tls/vsnap.crt"
PROD_KEY = "/var/lib/vsnap/tls/vsnap.key"
PROD_LISTEN = "listen 8900 ssl;"
PROD_LISTEN6 = "listen [::]:8900 ssl;"


def render_site(socket_path: Path, port: int, cert: Path, key: Path) -> str:
    replacements = {
        PROD_SOCKET: f"unix:{socket_path}",
        PROD_CERT: str(cert),
        PROD_KEY: str(key),
        PROD_LISTEN: f"listen 127.0.0.1:{port} ssl;",
        PROD_LISTEN6: "",  # loopback IPv4 only: nothing exposed, and no IPv6 needed
    }
    found = dict.fromkeys(replacements, 0)
    lines = []
    for line in SITE.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            for old, new in replacements.items():
                found[old] += line.count(old)
                line = line.replace(old, new)
        lines.append(line)
    missing = [old for old, count in found.items() if count == 0]
    assert not missing, f"{SITE} no longer has {missing}: update its header and this test"
    return "\n".join(lines) + "\n"


def worker_account() -> tuple[str, str, int]:
    """The account nginx's workers run as: www-data as on Debian (the unit gives the socket to
    that group), else nobody."""
    for name in ("www-data", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_gid
    pytest.skip("neither www-data nor nobody exists to run nginx's workers as")


def main_conf(workdir: Path, site: Path) -> str:
    user, group, _ = worker_account()
    temp_paths = "\n".join(f"    {kind}_temp_path {workdir / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by tests/integration/test_nginx.py
user {user} {group};
worker_processes 1;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} notice;
events {{
    worker_connections 64;
}}
http {{
    access_log {workdir / 'access.log'};
{temp_paths}
    # What Debian's nginx.conf sets for every site: the site must override it.
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    include {site};
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def stop(proc: subprocess.Popen | None) -> None:
    """Ends a process started in a session of its own, with all its children."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Proxied:
    """nginx (rendered site) on a free port, in front of a socket; optionally a gunicorn of
    the test appliance on that socket, started as the unit starts it."""

    def __init__(self, *, with_server: bool):
        self.with_server = with_server
        self.workers_group = worker_account()[1]
        # Not under pytest's tmp_path: its directories are 0700, and nginx's workers (www-data)
        # must reach the socket's directory.
        self.dir = Path(tempfile.mkdtemp(prefix="vsnap-nginx-"))
        os.chmod(self.dir, 0o711)
        run = self.dir / "run"
        run.mkdir()
        # As the unit makes /run/vsnap (RuntimeDirectoryMode=0755, root's): the socket in it
        # is made the workers' group's by the server itself (VSNAP_SOCKET_GROUP).
        os.chmod(run, 0o755)
        self.socket = run / "api.sock"
        self.port = free_port()
        self.site = self.dir / "vsnap.conf"
        self.site.write_text(render_site(self.socket, self.port, STATE / "tls" / "vsnap.crt",
                                         STATE / "tls" / "vsnap.key"))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(main_conf(self.dir, self.site))
        self.server_log = self.dir / "gunicorn.log"
        self.server: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> str:
        return str(STATE / "tls" / "vsnap.crt")

    def nginx_argv(self, *extra: str) -> list[str]:
        # -e: nginx's own error log before it reads the configuration (not /var/log/nginx).
        return [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf), *extra]

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.nginx_argv("-t"), capture_output=True, text=True, timeout=60)

    def start(self, timeout: float = 90) -> "Proxied":
        checked = self.check()
        assert checked.returncode == 0, f"nginx -t refused the rendered site:\n{checked.stderr}"
        if self.with_server:
            env = {**os.environ, "VSNAP_STATE": str(STATE), "VSNAP_SSH_PORT": str(SSH_PORT),
                   "VSNAP_BIND": f"unix:{self.socket}", "VSNAP_PLAIN_HTTP": "1",
                   "VSNAP_ACCESS_LOG": "-",  # gunicorn's access line shows the client address
                   "VSNAP_TRUSTED_PROXY": "1", "VSNAP_SOCKET_GROUP": self.workers_group,
                   # The suite's server runs the worker. Failed logins are counted per address
                   # in the shared database, and the suite's 401 tests leave many from
                   # 127.0.0.1, the address nginx passes on: no throttling, as for that server.
                   "VSNAP_WORKER": "0", "VSNAP_WORKERS": "1", "VSNAP_AUTH_FAIL_LIMIT": "100000",
                   # gunicorn_conf clears the metrics directory at start: not the suite server's.
                   "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics")}
            with open(self.server_log, "ab") as log:
                # As the unit runs it; the control socket beside the API's, not the one the
                # suite's servers use.
                self.server = subprocess.Popen(
                    [str(GUNICORN), "-c", "python:vsnap.gunicorn_conf",
                     "--control-socket", str(self.socket.with_name("gunicorn.ctl")), "vsnap.wsgi:app"],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        with open(self.dir / "nginx.out", "ab") as out:
            self.nginx = subprocess.Popen(self.nginx_argv("-g", "daemon off;"), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        # Up when the API answers through nginx: 401 without a login (until gunicorn's worker
        # has loaded the app, nginx answers 503 itself).
        wanted = 401 if self.with_server else 503
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for proc, log in ((self.nginx, self.dir / "error.log"), (self.server, self.server_log)):
                if proc is not None and proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{tail(log)}")
            try:
                last = requests.get(self.base + "/api/system", verify=self.cert, timeout=5)
                if last.status_code == wanted:
                    return self
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"no {wanted} through nginx within {timeout}s (last: {last}):\n"
                           f"{tail(self.dir / 'error.log')}\n{tail(self.server_log)}")

    def stop(self) -> None:
        stop(self.nginx)
        stop(self.server)
        self.nginx = self.server = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def proxied():
    front = Proxied(with_server=True)
    try:
        yield front.start()
    finally:
        front.remove()


def _handshake(port: int, version: ssl.TLSVersion, ciphers: str | None = None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version()


def test_rendered_site_passes_nginx_t():
    front = Proxied(with_server=False)
    try:
        checked = front.check()
        assert checked.returncode == 0, checked.stderr
        assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    finally:
        front.remove()


def test_login_through_nginx_gets_the_api(proxied, admin):
    r = requests.get(proxied.base + "/api/system", auth=admin.auth, verify=proxied.cert, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["api_version"] == "1.0"
    assert r.headers["Server"] == "nginx"  # server_tokens off; gunicorn's header is not passed


def test_only_root_and_nginx_workers_reach_the_api_socket(proxied, outsider):
    st = os.stat(proxied.socket)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, grp.getgrgid(st.st_gid).gr_name) == \
        (0o660, 0, proxied.workers_group)
    probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
    python = "/usr/bin/python3"  # the system's: the accounts below may not enter the venv's home
    # Another local account is refused; nginx's workers' account gets in (it is how nginx does).
    refused = subprocess.run(["setpriv", f"--reuid={outsider.name}", f"--regid={outsider.name}", "--clear-groups",
                              python, "-c", probe, str(proxied.socket)], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
    name, group, _ = worker_account()
    allowed = subprocess.run(["setpriv", f"--reuid={name}", f"--regid={group}", "--init-groups",
                              python, "-c", probe, str(proxied.socket)], capture_output=True, text=True,
                             timeout=30)
    assert allowed.stdout.strip() == "connected", allowed


def test_no_login_is_401_through_nginx(proxied):
    r = requests.get(proxied.base + "/api/system", verify=proxied.cert, timeout=60)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.json()["error"]["type"] == "AuthenticationError"


def test_tls12_and_13_accepted(proxied):
    assert _handshake(proxied.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(proxied.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_12_refused(proxied, version):
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(proxied.port, version, ciphers="ALL:@SECLEVEL=0")
    # nginx must be the one refusing, not our client failing to offer the version.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value)


@pytest.mark.parametrize("cipher", ["AES128-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"])
def test_weak_tls12_ciphers_refused(proxied, cipher):
    # No CBC, no static RSA key exchange: forward-secret AEAD suites only.
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(proxied.port, ssl.TLSVersion.TLSv1_2, ciphers=cipher + ":@SECLEVEL=0")
    assert "NO_CIPHERS_AVAILABLE" not in str(caught.value)


def test_body_over_1mib_is_413_from_nginx(proxied, admin):
    # Only the headers are sent: nginx answers from Content-Length without reading the body.
    conn = http.client.HTTPSConnection("127.0.0.1", proxied.port, timeout=30,
                                       context=ssl.create_default_context(cafile=proxied.cert))
    token = base64.b64encode(f"{admin.name}:{admin.password}".encode()).decode()
    conn.putrequest("POST", "/api/system")
    for header, value in {"Authorization": f"Basic {token}", "Content-Type": "application/json",
                          "Content-Length": str((1 << 20) + 1)}.items():
        conn.putheader(header, value)
    conn.endheaders()
    response = conn.getresponse()
    try:
        assert response.status == 413
        assert response.getheader("Content-Type").startswith("application/json")
        assert json.loads(response.read())["error"]["type"] == "PayloadTooLargeError"
    finally:
        conn.close()


def test_client_address_is_the_one_nginx_saw(proxied, admin):
    # A client's own X-Forwarded-For is dropped: the server logs (and throttles) the address
    # nginx accepted the connection from.
    marker = f"vsnap-nginx-test-{secrets.token_hex(6)}"
    r = requests.get(proxied.base + "/api/system", auth=admin.auth, verify=proxied.cert, timeout=120,
                     headers={"User-Agent": marker, "X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in proxied.server_log.read_text(errors="replace").splitlines() if marker in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lines, f"no access log line for the request:\n{tail(proxied.server_log)}"
    assert lines[-1].startswith("127.0.0.1 "), lines[-1]
    assert "203.0.113.9" not in lines[-1]


@pytest.fixture(scope="module")
def bare_front():
    """nginx alone: nothing listens on its socket, so every answer is nginx's own."""
    front = Proxied(with_server=False)
    try:
        front.start(timeout=30)
        yield front
    finally:
        front.remove()


def _assert_error_object(r: requests.Response, status: int, kind: str = "ValidationError") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert error["type"] == kind and error["message"], error
    return error


def test_api_down_is_503_json(bare_front):
    r = requests.get(bare_front.base + "/api/system", verify=bare_front.cert, timeout=30)
    _assert_error_object(r, 503, "ServiceUnavailableError")
    assert r.headers["Retry-After"]


def test_url_over_nginx_buffer_is_414_json(bare_front):
    r = requests.get(bare_front.base + "/api/volume?name=" + "a" * 9000, verify=bare_front.cert, timeout=30)
    _assert_error_object(r, 414)


def test_header_over_nginx_buffer_is_431_json(bare_front):
    r = requests.get(bare_front.base + "/api/system", headers={"X-Big": "b" * 9000},
                     verify=bare_front.cert, timeout=30)
    _assert_error_object(r, 431)


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/system HTTP/1.1\r\nHost: 127.0.0.1\r\nBroken header line\r\n\r\n",
    b"NOT AN HTTP REQUEST LINE\r\n\r\n",  # nginx has no URI for it
], ids=["header", "request-line"])
def test_malformed_request_is_400_json(bare_front, request_bytes):
    context = ssl.create_default_context(cafile=bare_front.cert)
    with socket.create_connection(("127.0.0.1", bare_front.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request_bytes)
        answer = _read_all(tls)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head and json.loads(body)["error"]["type"] == "ValidationError"


def test_plain_http_to_the_tls_port_is_400_json(bare_front):
    r = requests.get(f"http://127.0.0.1:{bare_front.port}/api/system", timeout=30)
    error = _assert_error_object(r, 400)
    assert "https" in error["message"]


def _read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
