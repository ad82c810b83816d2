"""AuthService: credential checks, the success cache, per-address throttling, one PAM check per
credentials at a time, and the stored failures kept while none was added."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from vsnap.config import Settings
from vsnap.errors import AuthenticationError, PermissionDeniedError, TooManyRequestsError
from vsnap.services.auth import AuthService, StoredFailures
from vsnap.store.generation import Generation

A, B = "192.0.2.1", "192.0.2.2"


class FakeAccounts:
    def __init__(self, passwords: dict[str, str], members: set[str]):
        self.passwords = passwords
        self.members = members
        self.auth_calls: list[tuple[str, str]] = []
        self.member_calls: list[tuple[str, str]] = []

    def authenticate(self, user, password):
        self.auth_calls.append((user, password))
        return self.passwords.get(user) == password

    def is_member(self, user, group):
        self.member_calls.append((user, group))
        return user in self.members


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, auth_fail_limit=3, auth_fail_window=60.0,
                    auth_cache_seconds=3.0, admin_group="vsnap-admins")


@pytest.fixture
def accounts():
    return FakeAccounts({"alice": "s3cret", "bob": "hunter2"}, members={"alice"})


@pytest.fixture
def auth(settings, accounts, clock):
    return AuthService(settings, accounts, clock=clock)


def test_success_returns_user_and_checks_the_configured_group(auth, accounts):
    assert auth.authenticate("alice", "s3cret", A) == "alice"
    assert accounts.auth_calls == [("alice", "s3cret")]
    assert accounts.member_calls == [("alice", "vsnap-admins")]


@pytest.mark.parametrize("user, password", [(None, None), ("", "x"), ("alice", None), (None, "s3cret")])
def test_missing_credentials(auth, accounts, user, password):
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(user, password, A)
    assert "Authentication required" in info.value.message
    assert accounts.auth_calls == []


def test_wrong_password(auth, accounts):
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate("alice", "wrong", A)
    assert info.value.message == "Invalid username or password"
    assert accounts.member_calls == []


def test_unknown_user(auth):
    with pytest.raises(AuthenticationError):
        auth.authenticate("mallory", "s3cret", A)


def test_outsider_is_denied(auth, accounts):
    with pytest.raises(PermissionDeniedError) as info:
        auth.authenticate("bob", "hunter2", A)
    assert "bob" in info.value.message and "vsnap-admins" in info.value.message
    assert accounts.auth_calls == [("bob", "hunter2")]


def test_success_is_cached_until_the_ttl(auth, accounts, clock):
    assert auth.authenticate("alice", "s3cret", A) == "alice"
    clock.advance(1.0)
    assert auth.authenticate("alice", "s3cret", B) == "alice"
    assert len(accounts.auth_calls) == 1  # second request served from the cache
    clock.advance(2.5)  # 3.5 s after the first check: expired
    assert auth.authenticate("alice", "s3cret", A) == "alice"
    assert len(accounts.auth_calls) == 2
    # group membership is checked on every request, cached or not
    assert len(accounts.member_calls) == 3


def test_cache_does_not_accept_another_password(auth, accounts):
    auth.authenticate("alice", "s3cret", A)
    with pytest.raises(AuthenticationError):
        auth.authenticate("alice", "s3cret ", A)
    assert accounts.auth_calls[-1] == ("alice", "s3cret ")


def test_changed_password_stops_working_after_the_ttl(auth, accounts, clock):
    auth.authenticate("alice", "s3cret", A)
    accounts.passwords["alice"] = "n3w"
    clock.advance(2.0)
    assert auth.authenticate("alice", "s3cret", A) == "alice"  # still cached
    assert len(accounts.auth_calls) == 1
    clock.advance(1.5)
    with pytest.raises(AuthenticationError):
        auth.authenticate("alice", "s3cret", A)
    assert auth.authenticate("alice", "n3w", A) == "alice"
    # the old password stays refused (its failed check removed it from the cache)
    with pytest.raises(AuthenticationError):
        auth.authenticate("alice", "s3cret", A)


def test_removed_member_is_denied_even_while_cached(auth, accounts):
    auth.authenticate("alice", "s3cret", A)
    accounts.members.discard("alice")
    with pytest.raises(PermissionDeniedError):
        auth.authenticate("alice", "s3cret", A)


def test_throttling_after_repeated_failures(auth, accounts, clock):
    start = clock.now
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            auth.authenticate("alice", "guess", A)
        clock.advance(1.0)
    calls_before = len(accounts.auth_calls)
    with pytest.raises(TooManyRequestsError) as info:
        auth.authenticate("alice", "s3cret", A)  # even the right password
    assert len(accounts.auth_calls) == calls_before  # PAM is not even asked
    # the first failure (at start) leaves the window at start + 60; now is start + 3
    assert info.value.extra["retry_after"] == 58
    assert info.value.status == 429
    assert "58 s" in info.value.message

    # another address is unaffected
    assert auth.authenticate("alice", "s3cret", B) == "alice"

    clock.now = start + 59.0
    with pytest.raises(TooManyRequestsError) as info:
        auth.authenticate("alice", "s3cret", A)
    assert info.value.extra["retry_after"] == 2

    clock.now = start + 62.5  # every failure is older than the window
    assert auth.authenticate("alice", "s3cret", A) == "alice"


def test_only_failures_within_the_window_count(auth, clock):
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            auth.authenticate("alice", "guess", A)
        clock.advance(40.0)  # spread out: never three within 60 s
    assert auth.authenticate("alice", "s3cret", A) == "alice"


def test_missing_credentials_do_not_count_as_failures(auth):
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            auth.authenticate(None, None, A)
    assert auth.authenticate("alice", "s3cret", A) == "alice"


def test_outsider_successes_do_not_count_as_failures(auth):
    for _ in range(5):
        with pytest.raises(PermissionDeniedError):
            auth.authenticate("bob", "hunter2", A)
    assert auth.authenticate("alice", "s3cret", A) == "alice"


@pytest.mark.parametrize("user, password", [
    ("alice\x00", "s3cret"), ("ali\x00ce", "s3cret"), ("alice", "s3cret\x00"), ("alice", "\x00"),
    ("a" * 257, "x"), ("alice", "x" * 1025),
])
def test_nul_and_oversized_credentials_are_refused(auth, accounts, user, password):
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(user, password, A)
    assert info.value.message == "Invalid username or password"
    assert accounts.auth_calls == []  # never reach PAM


def test_refused_credentials_count_towards_throttling(auth):
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            auth.authenticate("alice", "s3\x00cret", A)
    with pytest.raises(TooManyRequestsError):
        auth.authenticate("alice", "s3cret", A)


def test_failures_stored_in_the_database_are_counted_by_every_process(settings, store, clock):
    """Two services over one store stand for two gunicorn workers: the limit is the limit of
    the appliance, not of each worker."""
    from vsnap.services.auth import StoredFailures

    from support import empty_tables

    empty_tables(store)
    first = AuthService(settings, FakeAccounts({"alice": "s3cret"}, {"alice"}), clock=clock,
                        failures=StoredFailures(store))
    second = AuthService(settings, FakeAccounts({"alice": "s3cret"}, {"alice"}), clock=clock,
                         failures=StoredFailures(store))
    for service in (first, second, first):  # 3 failures, spread over both
        with pytest.raises(AuthenticationError):
            service.authenticate("alice", "wrong", "198.18.0.9")
    for service in (first, second):
        with pytest.raises(TooManyRequestsError) as caught:
            service.authenticate("alice", "s3cret", "198.18.0.9")
        assert caught.value.extra["retry_after"] == 61
    assert second.authenticate("alice", "s3cret", "198.18.0.10") == "alice"  # other address
    clock.advance(61)
    assert second.authenticate("alice", "s3cret", "198.18.0.9") == "alice"
    with store.session() as s:  # failures older than the window are pruned as new ones come
        from vsnap.store.models import AuthFailure
        assert s.query(AuthFailure).count() == 3
    with pytest.raises(AuthenticationError):
        first.authenticate("alice", "wrong", "198.18.0.11")
    with store.session() as s:
        assert s.query(AuthFailure).count() == 1


# -- one PAM check per credentials at a time (single flight) ---------------------------------

WAIT = 10.0  # seconds a wait for another thread may take before the test fails


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class BlockingAccounts(FakeAccounts):
    """PAM that holds every check until `gate` is set (so threads pile up behind one), and
    accepts any of a user's passwords."""

    def __init__(self, passwords: dict[str, set[str]], members: set[str]):
        super().__init__({}, members)
        self.valid = passwords
        self.gate = threading.Event()
        self.gate.set()
        self.inside = 0  # checks running now
        self.raises: Exception | None = None
        self._count = threading.Lock()

    def authenticate(self, user, password):
        with self._count:
            self.auth_calls.append((user, password))
            self.inside += 1
        try:
            assert self.gate.wait(WAIT), "the test never let the check go"
            if self.raises is not None:
                raise self.raises
            return password in self.valid.get(user, ())
        finally:
            with self._count:
                self.inside -= 1


@pytest.fixture
def flight(tmp_path, clock):
    settings = Settings(state_dir=tmp_path, auth_fail_limit=100, auth_fail_window=60.0,
                        auth_cache_seconds=3.0, admin_group="vsnap-admins")
    accounts = BlockingAccounts({"alice": {"s3cret", "other"}, "carol": {"s3cret"}}, {"alice", "carol"})
    service = AuthService(settings, accounts, clock=clock)
    service.logins = []
    service.on_login.append(lambda user, password: service.logins.append((user, password)))
    return service


def checks_queued(auth) -> int:
    """Threads inside a credentials check: the one running PAM and those waiting for it."""
    with auth._lock:
        return sum(users for _, users in auth._checks.values())


def in_threads(calls) -> tuple[list, list[threading.Thread]]:
    """Starts one thread per (user, password); outcomes (name or exception) land in the list."""
    outcomes: list = []

    def run(auth, user, password):
        try:
            outcomes.append(auth.authenticate(user, password, A))
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for t in threads:
        t.start()
    return outcomes, threads


def join(threads) -> None:
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()


def test_expired_credentials_checked_once_for_every_waiting_request(flight, clock):
    accounts = flight.accounts
    assert flight.authenticate("alice", "s3cret", A) == "alice"
    clock.advance(3.5)  # the cached success expired
    accounts.gate.clear()
    n = 6
    outcomes, threads = in_threads([(flight, "alice", "s3cret")] * n)
    wait_until(lambda: checks_queued(flight) == n or len(accounts.auth_calls) > 2,
               "every request to queue behind the running check")
    assert len(accounts.auth_calls) == 2 and accounts.inside == 1
    accounts.gate.set()
    join(threads)
    assert outcomes == ["alice"] * n
    assert len(accounts.auth_calls) == 2  # one PAM call for all of them
    assert flight.logins == [("alice", "s3cret")] * 2  # on_login once per fresh check
    assert flight._checks == {}  # nothing left behind


@pytest.mark.parametrize("first, second", [
    (("alice", "s3cret"), ("alice", "other")),  # another password of the same user
    (("alice", "s3cret"), ("carol", "s3cret")),  # the same password of another user
])
def test_other_credentials_are_not_merged_into_a_running_check(flight, first, second):
    accounts = flight.accounts
    accounts.gate.clear()
    outcomes, threads = in_threads([(flight, *first), (flight, *second)])
    wait_until(lambda: accounts.inside == 2, "both checks to run at once")
    accounts.gate.set()
    join(threads)
    assert sorted(outcomes) == sorted([first[0], second[0]])
    assert sorted(accounts.auth_calls) == sorted([first, second])
    assert sorted(flight.logins) == sorted([first, second])


def test_a_failing_check_records_one_failure_per_attempt(flight):
    """A refusal is not shared: each waiting request checks for itself (the password may have
    just been changed) and each failure counts towards the throttle."""
    accounts = flight.accounts
    accounts.gate.clear()
    n = 4
    outcomes, threads = in_threads([(flight, "alice", "guess")] * n)
    wait_until(lambda: checks_queued(flight) == n, "every request to queue")
    accounts.gate.set()
    join(threads)
    assert len(outcomes) == n and all(isinstance(o, AuthenticationError) for o in outcomes)
    assert accounts.auth_calls == [("alice", "guess")] * n
    assert len(flight.failures.recent(A, 0)) == n
    assert flight.logins == [] and flight._checks == {}


def test_a_check_that_raises_leaves_nothing_behind(flight):
    flight.accounts.raises = RuntimeError("PAM module crashed")
    with pytest.raises(RuntimeError):
        flight.authenticate("alice", "s3cret", A)
    assert flight._checks == {}
    flight.accounts.raises = None
    assert flight.authenticate("alice", "s3cret", A) == "alice"


# -- stored failures kept while no failure was added -----------------------------------------

@contextmanager
def failure_reads(store):
    """The SELECTs on auth_failure sent to the database inside the block."""
    seen: list[str] = []

    def spy(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT") and "auth_failure" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", spy)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", spy)


@pytest.fixture
def failures_env(store, tmp_path):
    from support import empty_tables

    empty_tables(store)
    yield SimpleNamespace(store=store, path=tmp_path / "auth-failures.generation")
    empty_tables(store)


def test_stored_failures_read_the_database_only_after_a_new_failure(failures_env):
    failures = StoredFailures(failures_env.store, Generation(failures_env.path))
    with failure_reads(failures_env.store) as reads:
        assert failures.recent(A, 0.0) == [] and len(reads) == 1
        assert failures.recent(A, 0.0) == [] and len(reads) == 1  # nothing added: kept
        failures.add(A, 10.0, 0.0)
        assert failures.recent(A, 0.0) == [10.0] and len(reads) == 2
        failures.add(A, 20.0, 0.0)
        assert failures.recent(A, 0.0) == [10.0, 20.0] and len(reads) == 3
        # a later window is cut from the kept list, not read again
        assert failures.recent(A, 15.0) == [20.0] and failures.recent(A, 20.0) == []
        assert len(reads) == 3
        assert failures.recent(B, 0.0) == [] and len(reads) == 4  # kept per address


def test_stored_failures_see_a_failure_added_by_another_process(failures_env):
    mine = StoredFailures(failures_env.store, Generation(failures_env.path))
    theirs = StoredFailures(failures_env.store, Generation(failures_env.path))
    assert mine.recent(A, 0.0) == []
    theirs.add(A, 10.0, 0.0)
    assert mine.recent(A, 0.0) == [10.0]


def test_stored_failures_without_a_generation_read_every_time(failures_env):
    failures = StoredFailures(failures_env.store)
    failures.add(A, 10.0, 0.0)
    with failure_reads(failures_env.store) as reads:
        for _ in range(3):
            assert failures.recent(A, 0.0) == [10.0]
    assert len(reads) == 3


def test_throttle_across_processes_with_kept_failures(failures_env, settings, clock):
    """Two services with their own StoredFailures over one store and one token file (two
    gunicorn workers): the limit still holds for the appliance, and logins that add no
    failure do not read the table again."""
    services = [AuthService(settings, FakeAccounts({"alice": "s3cret"}, {"alice"}), clock=clock,
                            failures=StoredFailures(failures_env.store, Generation(failures_env.path)))
                for _ in range(2)]
    first, second = services
    with failure_reads(failures_env.store) as reads:
        for _ in range(3):
            assert second.authenticate("alice", "s3cret", A) == "alice"
        assert len(reads) == 1
    for service in (first, second, first):
        with pytest.raises(AuthenticationError):
            service.authenticate("alice", "wrong", A)
    for service in services:
        with pytest.raises(TooManyRequestsError):
            service.authenticate("alice", "s3cret", A)
