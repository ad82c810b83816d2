"""Sessions (sessions.py), through ReplicationService: start, cancel, list and get; the queue
(claim_next, fail_interrupted) and how a running session ends. Fakes and fixtures:
replication_support.py."""
from __future__ import annotations

import os
import threading
import time

import pytest

from vsnap.errors import ConflictError, NotFoundError, ValidationError
from vsnap.services.doorbell import Doorbell
from vsnap.services.owner import current_owner
from vsnap.services.replication import ACTIVE, CANCELED, COMPLETED, FAILED, PENDING, REPLICA

import replication_support
from replication_support import P1, P2, R1, R2

# The fixtures of replication_support these tests take, bound here for pytest to find (imported
# by name, each would read to ruff as redefined by every test's parameter of that name).
env = replication_support.env
rel = replication_support.rel


# =============================================================================================
# sessions
# =============================================================================================

def test_start_session_takes_a_snapshot(env, rel):
    body = env.svc.start_session(rel)
    assert env.snapshots.created == [env.fs]
    (snap_id,) = [k for k, v in env.catalog.snapshots.items()]
    name = env.catalog.snapshots[snap_id].row.name
    assert body["status"] == PENDING and body["rel_id"] == rel
    assert body["local_snap_id"] == str(snap_id)
    assert body["local_snap_name"] == name and body["remote_snap_name"] == name
    assert set(body) == {"id", "rel_id", "local_snap_id", "remote_snap_id", "local_snap_name", "remote_snap_name",
                         "repl_address", "size_sent", "size_sent_total", "rate", "status", "time_queued",
                         "time_started", "time_ended", "message"}
    assert body["time_started"] is None and body["time_ended"] is None and body["message"] is None
    assert env.svc.get_session(body["id"]) == body
    assert env.svc.list_sessions(rel) == [body]


def test_start_session_rings_the_queues_doorbell(env, rel):
    listener = Doorbell(env.settings.state_dir / "sessions.bell")
    try:
        assert listener.wait(0) is False  # listening, nothing rung yet
        env.svc.start_session(rel)
        assert listener.wait(0) is True
        with pytest.raises(ValidationError):
            env.svc.start_session(rel, remote_snap_name="a/b")
        assert listener.wait(0) is False  # nothing queued, nothing rung
    finally:
        listener.close()


def test_start_session_with_a_snapshot_and_remote_name(env, rel):
    snap = env.snapshot(env.fs, "daily")
    body = env.svc.start_session(rel, snap_id=str(snap), remote_snap_name="daily-copy")
    assert env.snapshots.created == []
    assert (body["local_snap_id"], body["local_snap_name"], body["remote_snap_name"]) == \
        (str(snap), "daily", "daily-copy")


def test_start_session_with_a_snapshot_of_another_volume(env, rel):
    snap = env.snapshot(env.lun, "other")
    with pytest.raises(ValidationError) as info:
        env.svc.start_session(rel, snap_id=snap)
    assert info.value.status == 400
    assert env.svc.list_sessions() == []


def test_start_session_only_on_the_primary(env, rel):
    replica = env.volume(env.p, "fs_replica")
    rrel = env.relationship(replica, P1, REPLICA)
    with pytest.raises(ConflictError) as info:
        env.svc.start_session(rrel)
    assert info.value.status == 409
    assert env.snapshots.created == [] and env.svc.list_sessions() == []


@pytest.mark.parametrize("name", ["-x", "a/b", "a@b", ""])
def test_start_session_bad_remote_name(env, rel, name):
    with pytest.raises(ValidationError):
        env.svc.start_session(rel, remote_snap_name=name)
    assert env.snapshots.created == []


def test_start_session_unknown(env, rel):
    with pytest.raises(NotFoundError):
        env.svc.start_session(R2)
    with pytest.raises(NotFoundError):
        env.svc.start_session(rel, snap_id=999)
    assert env.svc.list_sessions() == []


def test_cancel_a_queued_session(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=PENDING)
    body = env.svc.cancel_session(str(sid))
    assert body["status"] == FAILED and body["message"] == CANCELED == "Canceled"
    assert body["time_ended"] is not None


def test_cancel_a_running_session_answers_how_it_ended(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=ACTIVE, owner=current_owner())

    def transfer():  # the running transfer: sees the cancel, stops, ends the session
        while env.svc.sessions.still_active(sid) is None:
            time.sleep(0.02)
        env.svc.sessions.end(sid, FAILED, "zfs send failed: Broken pipe")

    worker = threading.Thread(target=transfer)
    worker.start()
    body = env.svc.cancel_session(str(sid), wait=10)
    worker.join(5)
    assert (body["status"], body["message"]) == (FAILED, CANCELED)  # never FAILED, then something else
    assert body["time_ended"] is not None


def test_cancel_of_a_session_that_does_not_stop_in_time_says_canceling(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=ACTIVE, owner=current_owner())
    body = env.svc.cancel_session(str(sid), wait=0)
    assert (body["status"], body["message"]) == (ACTIVE, "Canceling")
    assert env.svc.sessions.still_active(sid) == CANCELED


@pytest.mark.parametrize("status", [COMPLETED, FAILED])
def test_cancel_ended_session(env, rel, status):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=status, message="done before")
    with pytest.raises(ConflictError) as info:
        env.svc.cancel_session(sid)
    assert info.value.status == 409
    row = env.sess(sid)
    assert (row.status, row.message) == (status, "done before")


@pytest.mark.parametrize("sid", ["999", "abc", "", "-1", "1.0", None])
def test_unknown_session(env, rel, sid):
    with pytest.raises(NotFoundError):
        env.svc.get_session(sid)
    with pytest.raises(NotFoundError):
        env.svc.cancel_session(sid)


def test_list_sessions_by_relationship(env, rel):
    env.partner(P2, system_id="0f" * 8)
    other = env.relationship(env.lun, P2, rel_id=R2)
    a = env.session(rel, 1)
    b = env.session(other, 2)
    c = env.session(rel, 3)
    assert [s["id"] for s in env.svc.list_sessions()] == [str(a), str(b), str(c)]
    assert [s["id"] for s in env.svc.list_sessions(rel)] == [str(a), str(c)]
    assert [s["id"] for s in env.svc.list_sessions(other)] == [str(b)]


# -- the queue ---------------------------------------------------------------------------------

@pytest.fixture
def two_rels(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    return env.relationship(env.fs, P1, rel_id=R1), env.relationship(env.lun, P2, rel_id=R2)


def test_claim_next_order_and_one_active_per_relationship(env, two_rels):
    a, b = two_rels
    a1, a2, b1 = env.session(a, 1), env.session(a, 2), env.session(b, 3)
    assert env.svc.claim_next(set()) == a1
    row = env.sess(a1)
    assert row.status == ACTIVE and row.owner == current_owner() and row.time_started is not None
    assert env.svc.claim_next(set()) == b1  # a has one ACTIVE: its next waits
    assert env.svc.claim_next(set()) is None
    assert env.sess(a2).status == PENDING
    env.svc.sessions.end(a1, COMPLETED, None)
    assert env.svc.claim_next(set()) == a2


def test_claim_next_respects_busy_relationships(env, two_rels):
    a, b = two_rels
    a1, b1 = env.session(a, 1), env.session(b, 2)
    assert env.svc.claim_next({a}) == b1
    assert env.svc.claim_next({a}) is None
    assert env.sess(a1).status == PENDING
    assert env.svc.claim_next(set()) == a1


def test_claim_next_skips_ended_sessions(env, two_rels):
    a, _ = two_rels
    env.session(a, 1, status=FAILED)
    env.session(a, 2, status=COMPLETED)
    assert env.svc.claim_next(set()) is None


def test_fail_interrupted(env, two_rels):
    a, b = two_rels
    dead = env.session(a, 1, status=ACTIVE, owner=f"{os.getpid()}:999999999999")  # same pid, other process
    nobody = env.session(b, 2, status=ACTIVE, owner=None)
    live = env.session(a, 3, status=ACTIVE, owner=current_owner())
    pending = env.session(b, 4, status=PENDING)
    env.svc.fail_interrupted()
    for sid in (dead, nobody):
        row = env.sess(sid)
        assert row.status == FAILED and "Interrupted" in row.message and row.time_ended is not None
    assert env.sess(live).status == ACTIVE
    assert env.sess(pending).status == PENDING


def test_end_completes_and_updates_the_relationship(env, rel):
    snap = env.snapshot(env.fs, "s1")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id="88", size_sent=1234)
    row = env.sess(sid)
    assert (row.status, row.message, row.remote_snap_id, row.size_sent) == (COMPLETED, None, "88", 1234)
    assert row.time_ended is not None
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (COMPLETED, snap, snap)
    body = env.svc.get_relationship(rel)
    assert (body["last_sync_status"], body["last_attempt_snap_id"], body["last_success_snap_id"]) == \
        (COMPLETED, str(snap), str(snap))


def test_end_never_overwrites_a_canceled_session(env, rel):
    good = env.snapshot(env.fs, "s1")
    first = env.session(rel, good, status=ACTIVE)
    env.svc.sessions.end(first, COMPLETED, None, remote_snap_id="1", size_sent=10)
    snap = env.snapshot(env.fs, "s2")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.cancel_session(sid)
    env.svc.sessions.end(sid, FAILED, "later failure")
    assert (env.sess(sid).status, env.sess(sid).message) == (FAILED, CANCELED)
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (FAILED, snap, good)


def test_a_session_whose_snapshot_arrived_is_completed_though_a_cancel_came_first(env, rel):
    snap = env.snapshot(env.fs, "s2")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.cancel_session(sid, wait=0)
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id="99", size_sent=5)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id) == (COMPLETED, "99") and "when the cancel came" in row.message
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_success_snap_id) == (COMPLETED, snap)


def test_end_failed_keeps_the_last_success(env, rel):
    good, bad = env.snapshot(env.fs, "s1"), env.snapshot(env.fs, "s2")
    env.svc.sessions.end(env.session(rel, good, status=ACTIVE), COMPLETED, None)
    sid = env.session(rel, bad, status=ACTIVE)
    env.svc.sessions.end(sid, FAILED, "zfs send failed: boom")
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, "zfs send failed: boom")
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (FAILED, bad, good)


def test_fail_interrupted_releases_the_holds_the_dead_session_kept(env, rel):
    env.ds.zfs.features = frozenset({"holds"})
    snap = env.snapshot(env.fs, "s1")
    env.session(rel, snap, status=ACTIVE, owner=None)
    env.ds.held["p/fs@s1"] = {f"vsnap-repl-{rel}", "admins-own"}
    env.svc.fail_interrupted()
    assert env.ds.held["p/fs@s1"] == {"admins-own"}
