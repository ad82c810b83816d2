"""Who may use the API: OS accounts checked through PAM, members of the vsnap group only.

Successful checks are cached for a few seconds so PAM does not bound throughput; a changed or
removed password stops working once the entry expires. Repeated failures from one address are
throttled; the failures are counted in the database, so every server process sees them all.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable

from ..config import Settings
from ..drivers.accounts import AccountDriver
from ..errors import AuthenticationError, PermissionDeniedError, TooManyRequestsError
from ..store.generation import Generation
from ..store.models import AuthFailure

MAX_CREDENTIAL_LENGTH = 1024


class MemoryFailures:
    """Failed logins per address, in this process only (tests, single-process use)."""

    def __init__(self):
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def recent(self, address: str, since: float) -> list[float]:
        with self._lock:
            failures = self._failures.get(address)
            while failures and failures[0] <= since:
                failures.popleft()
            return list(failures or ())

    def add(self, address: str, at: float, since: float) -> None:
        with self._lock:
            self._failures.setdefault(address, deque()).append(at)
            if len(self._failures) > 10000:  # bound memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))


class StoredFailures:
    """Failed logins per address in the database, shared by every server process. With a
    generation token (changed at each failure, by any process) a process reads the database
    only when a failure was added since it last looked: a request costs one file read."""

    def __init__(self, store, generation: Generation | None = None):
        self.store = store
        self.generation = generation
        self._seen: dict[str, tuple[bytes, list[float]]] = {}

    def recent(self, address: str, since: float) -> list[float]:
        token = self.generation.read() if self.generation is not None else None
        seen = self._seen.get(address)
        if seen is not None and seen[0] == token:
            return [at for at in seen[1] if at > since]
        with self.store.session() as s:
            found = [row.at for row in s.query(AuthFailure).filter(
                AuthFailure.address == address, AuthFailure.at > since).order_by(AuthFailure.at)]
        if token is not None:
            if len(self._seen) > 10000:  # bound memory under a spray of addresses
                self._seen.clear()
            self._seen[address] = (token, found)
        return found

    def add(self, address: str, at: float, since: float) -> None:
        with self.store.session() as s:
            s.add(AuthFailure(address=address[:64], at=at))
            s.query(AuthFailure).filter(AuthFailure.at <= since).delete()
        if self.generation is not None:
            self.generation.bump()


class AuthService:
    def __init__(self, settings: Settings, accounts: AccountDriver, clock=time.time, failures=None,
                 on_login: Callable[[str, str], None] | None = None):
        self.settings = settings
        self.accounts = accounts
        self.clock = clock  # wall time: failures are compared across processes
        self.failures = failures if failures is not None else MemoryFailures()
        self._salt = os.urandom(16)
        self._cache: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()
        self._checks: dict[tuple[str, bytes], tuple[threading.Lock, int]] = {}  # checks running, and waiters
        # Called with (user, password) after a fresh password check (Samba's copy of the password).
        self.on_login: list[Callable[[str, str], None]] = [on_login] if on_login else []

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._salt, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def _check_throttle(self, address: str) -> None:
        now = self.clock()
        failures = self.failures.recent(address, now - self.settings.auth_fail_window)
        if len(failures) >= self.settings.auth_fail_limit:
            retry = int(self.settings.auth_fail_window - (now - failures[0])) + 1
            raise TooManyRequestsError(
                f"Too many failed logins from {address}; try again in {retry} s",
                retry_after=retry)

    def _record_failure(self, address: str) -> None:
        now = self.clock()
        self.failures.add(address, now, now - self.settings.auth_fail_window)

    def _cached(self, key) -> bool:
        with self._lock:
            expiry = self._cache.get(key)
        return expiry is not None and expiry >= self.clock()

    @contextmanager
    def _checking(self, key):
        with self._lock:
            lock, users = self._checks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._checks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._checks[key]
                if users == 1:
                    del self._checks[key]
                else:
                    self._checks[key] = (lock, users - 1)

    def authenticate(self, user: str | None, password: str | None, address: str) -> str:
        """Returns the user name, or raises 401/403/429 errors."""
        self._check_throttle(address)
        if not user or password is None:
            raise AuthenticationError("Authentication required: use HTTP basic auth")
        if (len(user) > 256 or len(password) > MAX_CREDENTIAL_LENGTH
                or "\x00" in user or "\x00" in password):
            self._record_failure(address)
            raise AuthenticationError("Invalid username or password")
        key = (user, self._digest(password))
        fresh = False
        if not self._cached(key):
            # One password check per credentials at a time: when the cached entry expires
            # under load, the other requests with them wait for that check, not each run PAM.
            with self._checking(key):
                if not self._cached(key):
                    if not self.accounts.authenticate(user, password):
                        self._record_failure(address)
                        with self._lock:
                            self._cache.pop(key, None)
                        raise AuthenticationError("Invalid username or password")
                    with self._lock:
                        if len(self._cache) > 10000:
                            self._cache.clear()
                        self._cache[key] = self.clock() + self.settings.auth_cache_seconds
                    fresh = True
        # The role on every request: a removal from the group takes effect at once.
        if not self.accounts.is_member(user, self.settings.admin_group):
            raise PermissionDeniedError(
                f"User {user} does not have the vsnap_admin role (group {self.settings.admin_group})")
        if fresh:
            for hook in self.on_login:
                hook(user, password)
        return user
