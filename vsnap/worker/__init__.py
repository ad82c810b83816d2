"""Background work of the appliance: one server process at a time runs it, whichever holds
the worker lock (an flock, freed when that process dies, so another one takes over)."""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from ..logs import request_id_var
from .partner_server import PartnerRequestServer, socket_path

if TYPE_CHECKING:  # the forced SSH command imports this package: no more than it needs
    from ..config import Settings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, services):
        self.settings = settings
        self.services = services
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._partner_requests: PartnerRequestServer | None = None
        self.queue_interval = 0.5  # seconds between looks at the replication queue, unless rung

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vsnap-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._partner_requests is not None:
            self._partner_requests.stop()

    def _lead(self) -> bool:
        """Waits until this process holds the worker lock (or is told to stop)."""
        self.settings.worker_lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.settings.worker_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        while not self._stop.is_set():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                log.info("worker: running in process %s", os.getpid())
                return True
            except BlockingIOError:
                self._stop.wait(1.0)
        return False

    def _run(self) -> None:
        request_id_var.set("worker")
        if not self._lead():
            return
        self._serve_partner_requests()
        threading.Thread(target=self._run_sessions, name="vsnap-sessions", daemon=True).start()
        threading.Thread(target=self._run_stamping, name="vsnap-stamping", daemon=True).start()
        threading.Thread(target=self._run_notices, name="vsnap-notices", daemon=True).start()
        threading.Thread(target=self._run_network, name="vsnap-network", daemon=True).start()
        targets = self.services.targets
        last_resync = time.monotonic()
        while not self._stop.wait(self.settings.target_check_interval):
            try:
                if time.monotonic() - last_resync >= self.settings.target_resync_interval:
                    last_resync = time.monotonic()
                    targets.check(full=True)
                else:
                    targets.check()
            except Exception:  # the worker must outlive any one failure
                log.exception("worker: target check failed")

    def _run_network(self) -> None:
        """Interfaces' services keep taking effect: addresses come and go, the NFS server's RPC
        ports move, the packet filter's table can be flushed from outside. A thread of its own,
        so a storage command that hangs the target check does not hold it up."""
        request_id_var.set("worker")
        while not self._stop.wait(self.settings.target_check_interval):
            try:
                self.services.network.enforce()  # re-applied only when something changed
            except Exception:
                log.exception("worker: network services check failed")

    def _run_stamping(self) -> None:
        """Snapshots picked up from outside the API get their ids stamped in ZFS (one
        `zfs set` each: thousands take minutes, so here and not in the read that found them)."""
        request_id_var.set("worker")
        while not self._stop.wait(self.settings.target_check_interval):
            try:
                self.services.catalog.stamp_missing()
            except Exception:
                log.exception("worker: stamping snapshots failed")
            self._stop.wait(self.settings.target_resync_interval)

    def _run_notices(self) -> None:
        """Partners that were unreachable hear what they missed (relationships deleted here)."""
        request_id_var.set("worker")
        while not self._stop.wait(self.settings.partner_notice_interval):
            try:
                self.services.replication.deliver_notices()
                self.services.replication.recover_deletes()  # those left pending on a partner
            except Exception:
                log.exception("worker: delivering notices to partners failed")

    def _serve_partner_requests(self) -> None:
        """Partners' requests (the forced SSH command) are answered in this process, whose
        service layer is built already; without it each request builds one of its own."""
        server = PartnerRequestServer(socket_path(self.settings.state_dir), self.services.replication.serve)
        try:
            server.start()
        except OSError as exc:
            log.warning("worker: partner requests will be answered in-process: cannot listen at %s: %s",
                        server.path, exc)
            return
        self._partner_requests = server

    def _run_sessions(self) -> None:
        """The replication queue: PENDING sessions start in order, one at a time per
        relationship, up to `repl_parallel` at once."""
        replication = self.services.replication
        try:
            replication.fail_interrupted()
        except Exception:
            log.exception("worker: could not settle interrupted sessions")
        try:
            replication.recover_deletes()
        except Exception:
            log.exception("worker: could not settle interrupted relationship deletes")
        running: dict[str, threading.Event] = {}  # relationship id -> set when its transfer ended
        while not self._stop.is_set():
            replication.doorbell.wait(self.queue_interval)  # rung when a session is queued or one ends
            if self._stop.is_set():
                break
            try:
                for rel_id in [r for r, ended in running.items() if ended.is_set()]:
                    del running[rel_id]
                while len(running) < self.settings.repl_parallel:
                    session_id = replication.claim_next(set(running))
                    if session_id is None:
                        break
                    rel_id = replication.get_session(session_id)["rel_id"]
                    running[rel_id] = ended = threading.Event()
                    threading.Thread(target=self._run_session, args=(session_id, ended),
                                     name=f"vsnap-session-{session_id}", daemon=True).start()
            except Exception:
                log.exception("worker: session dispatch failed")

    def _run_session(self, session_id: int, ended: threading.Event) -> None:
        replication = self.services.replication
        try:
            replication.run_session(session_id)
        finally:
            ended.set()
            replication.doorbell.ring()  # a session queued behind this one starts now
