"""A real vsnap server (gunicorn over HTTPS) for integration tests, stopped by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


class Appliance:
    def __init__(self, state: Path, port: int, *, ssh_port: int = 8932, env: dict | None = None,
                 log_name: str = "server"):
        self.state = Path(state)
        self.port = port
        self.ssh_port = ssh_port
        self.extra_env = env or {}
        self.log_path = self.state / "log" / f"{log_name}-{port}.log"
        self.proc: subprocess.Popen | None = None
        self.http: requests.Session | None = None  # set for keep-alive (benchmarks); else a connection per request
        self.account = None  # an OS account with .auth; its current password is used

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> str:
        return str(self.state / "tls" / "vsnap.crt")

    def start(self, timeout: float | None = None) -> "Appliance":
        # VSNAP_TEST_START_TIMEOUT: a loaded kernel lab guest (TCG) may need more than 60 s
        timeout = timeout if timeout is not None else float(os.environ.get("VSNAP_TEST_START_TIMEOUT", "60"))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VSNAP_STATE": str(self.state), "VSNAP_PORT": str(self.port),
               "VSNAP_SSH_PORT": str(self.ssh_port), **self.extra_env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(GUNICORN), "-c", str(ROOT / "vsnap" / "gunicorn_conf.py"), "vsnap.wsgi:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                requests.get(self.base + "/api/system", verify=self.cert, timeout=2)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the gunicorn master and its workers
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> "Appliance":
        self.stop()
        return self.start()

    def kill_during(self, method: str, path: str, body, delay: float) -> requests.Response | None:
        """Sends the request, SIGKILLs the server's process group `delay` seconds later and
        starts it again. Returns the answer, if one came before the kill."""
        result: list = []

        def call():
            try:
                result.append(self.request(method, path, json=body, timeout=120))
            except requests.RequestException:
                pass  # the server died under the request, as intended

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(delay)
        self.stop(signal.SIGKILL)
        thread.join(60)
        self.start()
        return result[0] if result else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request(self, method: str, path: str, *, auth=..., **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        if auth is ...:
            auth = self.account.auth if self.account else None
        return (self.http or requests).request(method, self.base + path, verify=self.cert, auth=auth, **kwargs)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, **kw) -> dict:
        """A request that must succeed: returns its JSON body."""
        response = self.request(method, path, **kw)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()
