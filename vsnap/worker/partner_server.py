"""Partner requests answered by the running server instead of a new process per request.

A partner's SSH key is forced onto `python -m vsnap.worker.serve` (see drivers/ssh.py). That
command used to build the whole service layer for each request: about a second of start-up
(SQLAlchemy and the services), twice per replication session. Now it hands the request, and
its stdin (the snapshot stream, passed as a file descriptor), over a Unix socket in the state
directory to the server process that runs the background worker, which answers with the
services it has already built. The command itself imports nothing but the standard library.

When no server listens (the API is stopped, or the socket cannot be made), the command
answers in-process as before: nothing depends on the server running. The socket is the
server user's alone (mode 0600, and the peer's uid is checked): whoever can connect could run
the forced command directly anyway. The forced command's partner id is what the server
trusts, as the command line in authorized_keys was trusted before.

Protocol (one request per connection): the command sends one JSON line {"partner", "words"}
with its stdin attached (SCM_RIGHTS); the server answers the exit status on a line, then the
JSON text the command prints, and closes.

This module must stay importable without the service layer (standard library only at import).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)

SOCKET_NAME = "partner.sock"
MAX_HEADER = 64 * 1024  # SSH_ORIGINAL_COMMAND words: a few dozen bytes in practice

Serve = Callable[[str, "list[str]", BinaryIO], dict]


def socket_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / SOCKET_NAME


def answer(serve: Serve, partner_id: str, words: list[str], stdin: BinaryIO) -> tuple[int, str]:
    """The exit status and the JSON text of one request, as the forced command reports them."""
    from ..errors import ApiError
    from ..services import system_error
    try:
        result = serve(partner_id, words, stdin)
    except ApiError as exc:
        return 1, json.dumps({"error": exc.message, "type": exc.type})
    except Exception as exc:
        mapped = system_error(exc)
        if mapped is None:
            log.exception("partner request %r failed", words[:1])
        return 1, json.dumps({"error": mapped.message if mapped else f"internal error: {exc}"})
    return 0, json.dumps(result)


# == the forced command's side ==================================================================
def forward(path: Path, partner_id: str, words: list[str], stdin_fd: int) -> tuple[int, str] | None:
    """Hands the request to the server listening at `path`: its exit status and JSON text.
    None when no server takes the request (nothing was sent: the caller answers it itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except OSError:  # no socket, nobody listening, or a path too long for a socket
            return None
        header = json.dumps({"partner": partner_id, "words": words}).encode() + b"\n"
        sent = socket.send_fds(sock, [header], [stdin_fd])
        if sent < len(header):
            sock.sendall(header[sent:])
        # The request is the server's now: whatever happens, it is not made a second time here.
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as exc:
        return 1, json.dumps({"error": f"the appliance's server failed to answer: {exc}"})
    finally:
        sock.close()
    status, sep, text = b"".join(chunks).decode(errors="replace").partition("\n")
    if not sep or not status.strip().isdigit():
        return 1, json.dumps({"error": "the appliance's server stopped while answering"})
    return int(status), text.rstrip("\n")


# == the server's side ==========================================================================
class PartnerRequestServer:
    """Listens at `path` and answers each request in a thread of its own with `serve`."""

    def __init__(self, path: Path, serve: Serve):
        self.path = Path(path)
        self.serve = serve
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Binds the socket (replacing one a dead server left) and accepts in the background.
        Raises OSError when it cannot: partners' requests are then answered in-process."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # before listen(): nobody connects before that
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="vsnap-partner-requests", daemon=True)
        self._thread.start()
        log.info("answering partner requests at %s", self.path)

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        if self._thread is not None:
            self._thread.join(5)

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._sock is None:
                    return  # stopped
                log.exception("partner requests: accept failed")
                continue
            threading.Thread(target=self._handle, args=(conn,), name="vsnap-partner-request", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            with conn:
                request = self._read_request(conn, fds)
                if request is None:
                    return
                partner_id, words = request
                from ..logs import request_id_var
                request_id_var.set(f"partner-{words[0][:24] if words else '-'}")  # this thread's log lines
                with os.fdopen(fds.pop(), "rb") as stdin:
                    status, text = answer(self.serve, partner_id, words, stdin)
                conn.sendall(f"{status}\n{text}\n".encode())
        except OSError as exc:  # the forced command went away: nobody to answer
            log.warning("partner request: %s", exc)
        except Exception:
            log.exception("partner request failed")
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _peer_allowed(conn: socket.socket) -> bool:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
        return uid in (0, os.geteuid())

    def _read_request(self, conn: socket.socket, fds: list[int]) -> tuple[str, list[str]] | None:
        """The request's partner id and words, with its stdin in `fds`; None (answered with an
        error) for anything else."""
        data = b""
        while not data.endswith(b"\n") and len(data) <= MAX_HEADER:
            chunk, got, _flags, _addr = socket.recv_fds(conn, 65536, 1)
            fds.extend(got)
            if not chunk:
                break
            data += chunk
        try:
            if not self._peer_allowed(conn):
                raise ValueError("not the server's user")
            request = json.loads(data)
            partner_id, words = request["partner"], request["words"]
            if not isinstance(partner_id, str) or not isinstance(words, list) or \
                    not all(isinstance(w, str) for w in words) or len(fds) != 1:
                raise ValueError("malformed")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("partner request refused: %s", exc)
            conn.sendall(b"1\n" + json.dumps({"error": f"malformed request to the server: {exc}"}).encode() + b"\n")
            return None
        return partner_id, words
