"""AuthService: credential checks, the success cache and per-address throttling."""
from __future__ import annotations

import pytest

from vsnap.config import Settings
from vsnap.errors import AuthenticationError, PermissionDeniedError, TooManyRequestsError
from vsnap.services.auth import AuthService

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
    from support import empty_tables

    from vsnap.services.auth import StoredFailures

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
