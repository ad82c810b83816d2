"""Partner requests handed by the forced SSH command to the running server over a Unix socket
(vsnap.worker.partner_server), and the forced command itself (vsnap.worker.serve): real
sockets, real pipes, real subprocesses reading the passed stdin; a fake `serve`."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import vsnap.worker.serve as serve_mod
from vsnap.drivers.runner import CommandTimeout
from vsnap.errors import ConflictError
from vsnap.worker import Worker
from vsnap.worker.partner_server import PartnerRequestServer, forward, socket_path

P1 = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def sockdir():
    # Unix socket paths are short (108 bytes): pytest's tmp_path can be too long.
    path = Path(tempfile.mkdtemp(prefix="vps-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


class Recorder:
    """A `serve` that reads its whole stdin (or hands its descriptor to a command) and says
    what it got."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.error: Exception | None = None

    def __call__(self, partner_id, words, stdin):
        self.calls.append((partner_id, list(words)))
        if self.error is not None:
            raise self.error
        if words[:1] == ["recv"]:  # like `zfs receive`: a command reads the descriptor itself
            out = subprocess.run(["md5sum"], stdin=stdin.fileno(), capture_output=True, text=True, check=True)
            return {"md5": out.stdout.split()[0], "via": "command"}
        return {"md5": hashlib.md5(stdin.read()).hexdigest(), "words": words}


@pytest.fixture
def server(sockdir):
    rec = Recorder()
    srv = PartnerRequestServer(socket_path(sockdir), rec)
    srv.start()
    srv.recorder = rec
    yield srv
    srv.stop()


def feed(data: bytes):
    """A pipe whose read end carries `data` (written by a thread: more than a pipe holds)."""
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as f:
            f.write(data)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return r, thread


def test_no_server_means_the_caller_answers(sockdir):
    r, _ = feed(b"")
    try:
        assert forward(socket_path(sockdir), P1, ["info"], r) is None
    finally:
        os.close(r)


def test_a_socket_nobody_listens_on_means_the_caller_answers(sockdir):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path(sockdir)))  # left by a server that died
    dead.close()
    r, _ = feed(b"")
    try:
        assert forward(socket_path(sockdir), P1, ["info"], r) is None
    finally:
        os.close(r)


def test_a_socket_path_too_long_means_the_caller_answers():
    r, _ = feed(b"")
    try:
        assert forward(Path("/tmp/" + "x" * 200) / "partner.sock", P1, ["info"], r) is None
    finally:
        os.close(r)


@pytest.mark.parametrize("size", [0, 10, 3_000_000])
def test_request_and_stdin_reach_the_server(server, size):
    data = os.urandom(size)
    r, writer = feed(data)
    try:
        status, text = forward(server.path, P1, ["snapshots", "abc"], r)
    finally:
        os.close(r)
    writer.join(5)
    assert status == 0
    assert json.loads(text) == {"md5": hashlib.md5(data).hexdigest(), "words": ["snapshots", "abc"]}
    assert server.recorder.calls == [(P1, ["snapshots", "abc"])]


def test_the_stream_can_go_to_a_command_as_a_descriptor(server):
    data = os.urandom(2_000_000)
    r, writer = feed(data)
    try:
        status, text = forward(server.path, P1, ["recv", "r", "s1", "full"], r)
    finally:
        os.close(r)
    writer.join(5)
    assert (status, json.loads(text)) == (0, {"md5": hashlib.md5(data).hexdigest(), "via": "command"})


def test_refusals_come_back_as_the_forced_command_printed_them(server):
    server.recorder.error = ConflictError("The replica already has a snapshot named s1")
    r, _ = feed(b"")
    try:
        status, text = forward(server.path, P1, ["recv", "r", "s1", "full"], r)
    finally:
        os.close(r)
    assert status == 1
    assert json.loads(text) == {"error": "The replica already has a snapshot named s1", "type": "ConflictError"}


def test_system_failures_are_named_and_bugs_logged(server, caplog):
    server.recorder.error = CommandTimeout(["zfs", "receive"], 120)
    r, _ = feed(b"")
    status, text = forward(server.path, P1, ["info"], r)
    assert status == 1 and "did not answer in time" in json.loads(text)["error"]
    server.recorder.error = KeyError("bug")
    with caplog.at_level(logging.ERROR, logger="vsnap.worker.partner_server"):
        status, text = forward(server.path, P1, ["info"], r)
    os.close(r)
    assert status == 1 and json.loads(text)["error"].startswith("internal error")
    assert any("partner request" in rec.getMessage() for rec in caplog.records)


def test_requests_in_parallel(server):
    results = {}

    def one(i):
        r, _ = feed(str(i).encode() * 1000)
        try:
            results[i] = forward(server.path, P1, ["n", str(i)], r)
        finally:
            os.close(r)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for i in range(8):
        status, text = results[i]
        assert status == 0 and json.loads(text)["md5"] == hashlib.md5(str(i).encode() * 1000).hexdigest()


def _raw_request(path: Path, payload: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        if fds:
            socket.send_fds(sock, [payload], fds)
        else:
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.mark.parametrize("payload, with_fd", [
    (b"not json\n", True), (b'{"partner": 5, "words": []}\n', True), (b'{"partner": "x"}\n', True),
    (b'{"partner": "x", "words": ["a", 1]}\n', True), (b'{"partner": "x", "words": []}\n', False), (b"", False),
])
def test_malformed_requests_are_refused_and_the_server_carries_on(server, payload, with_fd):
    r, _ = feed(b"")
    try:
        answer = _raw_request(server.path, payload, [r] if with_fd else [])
        assert answer.startswith(b"1\n") and b"malformed" in answer
        assert server.recorder.calls == []
        assert forward(server.path, P1, ["info"], r)[0] == 0  # still serving
    finally:
        os.close(r)


def test_a_server_that_stops_mid_request_is_an_error_not_a_retry(sockdir):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path(sockdir)))
    listener.listen(1)

    def take_and_drop():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()  # the server died with the request in hand
    thread = threading.Thread(target=take_and_drop, daemon=True)
    thread.start()
    r, _ = feed(b"")
    try:
        status, text = forward(socket_path(sockdir), P1, ["recv", "r", "s", "full"], r)
    finally:
        os.close(r)
        listener.close()
    assert status == 1 and "stopped while answering" in json.loads(text)["error"]


def test_the_socket_is_the_server_users_alone(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused_even_through_an_open_socket(server):
    os.chmod(server.path.parent, 0o755)
    os.chmod(server.path, 0o666)  # the peer's uid is checked, not only the file's mode
    r, w = os.pipe()
    os.close(w)
    pid = os.fork()
    if pid == 0:  # the child, as nobody
        try:
            os.setuid(65534)
            answer = forward(server.path, P1, ["info"], r)
            os._exit(0 if answer and answer[0] == 1 and "malformed" in answer[1] else 3)
        except BaseException:
            os._exit(4)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.recorder.calls == []


def test_a_new_server_replaces_a_dead_ones_socket(sockdir):
    path = socket_path(sockdir)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    srv = PartnerRequestServer(path, Recorder())
    srv.start()
    try:
        r, _ = feed(b"x")
        assert forward(path, P1, ["info"], r)[0] == 0
        os.close(r)
    finally:
        srv.stop()
    assert not path.exists()
    r, _ = feed(b"")
    assert forward(path, P1, ["info"], r) is None
    os.close(r)


# == the worker runs the server =================================================================

def test_the_worker_answers_partner_requests_at_the_state_directory(sockdir):
    rec = Recorder()
    worker = Worker(SimpleNamespace(state_dir=sockdir), SimpleNamespace(replication=SimpleNamespace(serve=rec)))
    worker._serve_partner_requests()
    try:
        r, _ = feed(b"abc")
        status, text = forward(socket_path(sockdir), P1, ["info"], r)
        os.close(r)
        assert status == 0 and rec.calls == [(P1, ["info"])]
    finally:
        worker.stop()
    assert not socket_path(sockdir).exists()


def test_the_worker_carries_on_when_it_cannot_listen(caplog):
    worker = Worker(SimpleNamespace(state_dir=Path("/tmp/" + "y" * 200)),
                    SimpleNamespace(replication=SimpleNamespace(serve=Recorder())))
    with caplog.at_level(logging.WARNING):
        worker._serve_partner_requests()  # a path too long for a socket: requests answered in-process
    assert worker._partner_requests is None
    assert "in-process" in caplog.text


# == the forced command =========================================================================

def run_forced_command(monkeypatch, capsys, state: Path, words: str, stdin_data: bytes):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", words)
    r, writer = feed(stdin_data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.FileIO(r, "rb"))))
    try:
        status = serve_mod.main(["--state", str(state), "--partner", P1])
    finally:
        sys.stdin.close()
    writer.join(5)
    return status, json.loads(capsys.readouterr().out)


def test_forced_command_hands_the_request_to_the_server(server, sockdir, monkeypatch, capsys):
    monkeypatch.setattr(serve_mod, "answer_here", lambda *a: pytest.fail("answered in-process"))
    status, out = run_forced_command(monkeypatch, capsys, sockdir, "snapshots  r1", b"payload")
    assert status == 0 and out == {"md5": hashlib.md5(b"payload").hexdigest(), "words": ["snapshots", "r1"]}
    assert server.recorder.calls == [(P1, ["snapshots", "r1"])]


def test_forced_command_answers_itself_without_a_server(sockdir, monkeypatch, capsys):
    seen = []

    def answer_here(state, partner, words):
        seen.append((state, partner, words))
        return 1, json.dumps({"error": "refused here"})
    monkeypatch.setattr(serve_mod, "answer_here", answer_here)
    status, out = run_forced_command(monkeypatch, capsys, sockdir, "info", b"")
    assert (status, out) == (1, {"error": "refused here"})
    assert seen == [(str(sockdir), P1, ["info"])]


def test_forced_command_imports_no_service_layer_to_hand_over(server, sockdir):
    # The whole point: a request costs a Python start, not SQLAlchemy and the services.
    code = ("import sys, json; from vsnap.worker import serve; rc = serve.main(sys.argv[1:]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'flask') "
            "or m.startswith('vsnap.services') or m.startswith('vsnap.store')); "
            "print(json.dumps(heavy), file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "--state", str(sockdir), "--partner", P1],
                         input=b"data", capture_output=True, env={**os.environ, "SSH_ORIGINAL_COMMAND": "info"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["md5"] == hashlib.md5(b"data").hexdigest()
    assert json.loads(out.stderr.decode().strip().splitlines()[-1]) == []
