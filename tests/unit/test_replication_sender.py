"""The sending side (sender.py), through ReplicationService.run_session with a fake pipeline: the
plan (full or incremental, from which base, to which address; the partner asked only when that
is not known), failures, cancels and progress. Fakes and fixtures: replication_support.py."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import vsnap.services.replication.sender as sender_mod
from vsnap.drivers.pipeline import PipelineResult, PipelineStopped
from vsnap.services.owner import current_owner
from vsnap.services.replication import ACTIVE, CANCELED, COMPLETED, FAILED, RemoteError
from vsnap.store.models import ReplicationSession, Setting

import replication_support
from replication_support import P1, R1, REMOTE_SYS, replica_answer

# The fixtures of replication_support these tests take, bound here for pytest to find (imported
# by name, each would read to ruff as redefined by every test's parameter of that name).
env = replication_support.env
rel = replication_support.rel


# -- run_session / _transfer -------------------------------------------------------------------

class FakePipeline:
    def __init__(self, result=None, error=None, moves=()):
        self.result = result or PipelineResult(4096, 0, "", 0, json.dumps({"snap_id": "55"}), "")
        self.error = error
        self.moves = moves
        self.calls: list[dict] = []
        self.results: list = []  # one per call, first to last (a result or an exception), then `result`

    def __call__(self, producer, consumer, *, progress=None, should_stop=None, stall_seconds=60.0, tick=0.5,
                 max_rate=None):
        self.calls.append({"producer": producer, "consumer": consumer, "stall_seconds": stall_seconds,
                           "stop": should_stop(), "max_rate": max_rate})
        for moved in self.moves:
            progress(moved)
        if self.error:
            raise self.error
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, BaseException):
                raise result
            return result
        return self.result


@pytest.fixture
def sending(env, rel, monkeypatch):
    pipe = FakePipeline()
    monkeypatch.setattr(sender_mod, "run_pipeline", pipe)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": []}
    env.link.answers["snapshots"] = {"snapshots": []}
    return pipe


def _claimed(env, rel, snap):
    sid = env.session(rel, snap)
    assert env.svc.claim_next(set()) == sid
    return sid


def test_run_session_full_send(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    sid = _claimed(env, rel, snap)
    sending.moves = (100, 4096)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent, row.repl_address) == (COMPLETED, "55", 4096, "10.0.0.2")
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "p/fs@s1"]
    assert call["consumer"] == ["ssh-fake", P1, "10.0.0.2", "8922", "--", "recv", rel, "s1", "full"]
    assert call["stall_seconds"] == 7.0 and call["stop"] is None
    assert [(c.op, c.args, c.via) for c in env.link.calls] == [("prepare", [rel], None)]
    assert env.rels()[rel].last_success_snap_id == snap


def test_run_session_incremental_from_the_newest_common_snapshot(env, rel, sending):
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.snapshot(env.fs, "s3", guid="333", creation=300)
    s4 = env.snapshot(env.fs, "s4", guid="444", creation=400)
    env.snapshot(env.fs, "s5", guid="555", creation=500)  # newer than the one sent: never a base
    env.link.answers["snapshots"] = {"snapshots": [{"id": "2", "name": "s2", "guid": "222", "createtxg": 20},
                                                   {"id": "1", "name": "s1", "guid": "111", "createtxg": 10}]}
    sid = _claimed(env, rel, s4)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s2", "p/fs@s4"]
    assert call["consumer"][-6:] == ["recv", rel, "s4", "incremental", "from", "222"]  # its base, by guid
    assert env.rels()[rel].last_success_snap_id == s4 and s1 < s2 < s4


def test_run_session_already_on_the_replica(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sid = _claimed(env, rel, snap)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "31", 0)
    assert sending.calls == []


def test_run_session_no_common_base(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "x", "guid": "999"}]}
    sid = _claimed(env, rel, snap)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "none in common" in row.message
    assert sending.calls == []


def test_run_session_uses_a_replication_address(env, rel, sending):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.5.0.2", "10.5.0.3"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.5.0.2"
    assert sending.calls[0]["consumer"][2] == "10.5.0.2"


def test_run_session_refuses_an_option_like_replication_address(env, rel, sending):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["-oProxyCommand=x"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == FAILED
    assert sending.calls == []


@pytest.mark.parametrize("result, message", [
    (PipelineResult(10, 0, "", 255, "", "ssh: connect to host 10.0.0.2 port 8922: Connection refused\n"),
     "Connection refused"),
    (PipelineResult(10, 1, "cannot open 'p/fs@s1': dataset does not exist\n", -9, "", ""), "zfs send failed"),
    (PipelineResult(10, 0, "", 1, json.dumps({"error": "The replica already has a snapshot named s1"}), ""),
     "already has a snapshot"),
    (PipelineResult(10, 0, "", 0, "not json", ""), "could not receive"),
])
def test_run_session_failures(env, rel, sending, result, message):
    sending.result = result
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and message in row.message
    assert env.rels()[rel].last_sync_status == FAILED


def test_run_session_partner_unreachable(env, rel, sending):
    env.link.answers["info"] = RemoteError("partner 10.0.0.2:8922 unreachable over SSH: timeout", unreachable=True)
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "unreachable" in row.message


def test_run_session_stall(env, rel, sending):
    sending.error = PipelineStopped("stalled: no data moved for 7 s")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, "stalled: no data moved for 7 s")


def test_run_session_canceled_during_the_transfer(env, rel, sending, monkeypatch):
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))

    def cancel_then_stop(*args, **kwargs):
        env.svc.cancel_session(sid)
        reason = kwargs["should_stop"]()
        raise PipelineStopped(reason)
    monkeypatch.setattr(sender_mod, "run_pipeline", cancel_then_stop)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, CANCELED)


def test_run_session_snapshot_gone(env, rel, sending):
    snap = env.snapshot(env.fs, "s1")
    sid = _claimed(env, rel, snap)
    del env.catalog.snapshots[snap]
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "no longer exists" in row.message
    assert env.link.calls == []


def test_run_session_unexpected_error_still_ends_it(env, rel, sending):
    sending.error = KeyError("bug")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and row.message.startswith("Internal error")


def test_progress_is_recorded(env, rel, sending, monkeypatch):
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    seen = []

    clock = iter([100.0, 102.0, 104.0, 110.0, 111.0])  # the stream's start, two reports, its end
    monkeypatch.setattr(sender_mod.time, "monotonic", lambda: next(clock))

    def pipeline(producer, consumer, *, progress, should_stop, stall_seconds, max_rate):
        progress(1000)
        seen.append((env.sess(sid).size_sent, env.sess(sid).rate))
        progress(3000)
        seen.append((env.sess(sid).size_sent, env.sess(sid).rate))
        return PipelineResult(3000, 0, "", 0, json.dumps({"snap_id": "9"}), "")
    monkeypatch.setattr(sender_mod, "run_pipeline", pipeline)
    env.svc.run_session(sid)
    assert seen == [(1000, None), (3000, 1000)]  # the rate over the last seconds: 2000 bytes in 2 s
    row = env.sess(sid)
    assert (row.size_sent, row.rate) == (3000, 300)  # once ended: the stream's average, 3000 bytes in 10 s
    assert env.svc.get_session(sid)["rate"] == "300"


def test_session_reads_only_the_primarys_pool(env, rel, sending):
    env.volume(env.pool("q"), "elsewhere")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.catalog.load_args.clear()
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED and env.catalog.load_args == [env.p.id]


# -- after a completed session: the stream goes at once, the partner asked only if it refuses ----

def _completed(env, rel, snap, address="10.5.0.2", remote_id="31"):
    """A session of `snap` that completed through `address`, as sessions.end leaves it."""
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    with env.store.session() as s:
        s.get(ReplicationSession, sid).repl_address = address
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id=remote_id, size_sent=100)
    return sid


def _refused(message):
    return PipelineResult(10, -9, "", 1, json.dumps({"error": message}), "", producer_killed=True)


@pytest.fixture
def replicated(env, rel, sending):
    """s1 on the replica, sent by a completed session through 10.5.0.2; s2 newer, to send."""
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    _completed(env, rel, s1)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.5.0.2"]}
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    return SimpleNamespace(s1=s1, s2=s2)


def test_incremental_after_a_completed_session_asks_the_partner_nothing(env, rel, sending, replicated):
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.repl_address) == (COMPLETED, "55", "10.5.0.2")
    assert env.link.calls == []
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"]
    assert call["consumer"] == ["ssh-fake", P1, "10.5.0.2", "8922", "--", "recv", rel, "s2", "incremental",
                                "from", "111"]


def test_a_refused_stream_asks_the_partner_and_sends_from_the_base_it_has(env, rel, sending, replicated):
    # The replica lost s1 (destroyed by hand there) but has s0: the receive refuses the
    # difference from s1; the partner's answer gives the base.
    s0 = env.snapshot(env.fs, "s0", guid="100", creation=50)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "30", "name": "s0", "guid": "100"}]}
    sending.results = [_refused("cannot receive incremental stream: most recent snapshot does not match")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED, env.sess(sid).message
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"],
                                                      ["zfs", "send", "-i", "p/fs@s0", "p/fs@s2"]]
    assert env.rels()[rel].last_success_snap_id == replicated.s2 and s0


def test_a_refusal_that_asking_cannot_change_is_not_sent_twice(env, rel, sending, replicated):
    # The partner confirms s1 and the address: the same stream would be refused the same way.
    sending.results = [_refused("destination vbenchrb/fs_replica has been modified since most recent snapshot")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "modified" in row.message
    assert [c.op for c in env.link.calls] == ["prepare"] and len(sending.calls) == 1


def test_an_address_gone_since_the_last_session_asks_the_partner(env, rel, sending, replicated):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.6.0.2"]}
    sending.results = [PipelineResult(0, -9, "", 255, "", "ssh: connect to host 10.5.0.2 port 8922: No route\n",
                                      producer_killed=True)]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.repl_address) == (COMPLETED, "10.6.0.2")
    assert [c["consumer"][2] for c in sending.calls] == ["10.5.0.2", "10.6.0.2"]


def test_an_unreachable_partner_is_still_unreachable(env, rel, sending, replicated):
    sending.results = [PipelineResult(0, -9, "", 255, "", "ssh: connect to host 10.5.0.2: Connection refused\n",
                                      producer_killed=True)]
    env.link.answers["info"] = RemoteError("partner 10.0.0.2:8922 unreachable over SSH: refused", unreachable=True)
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "unreachable" in row.message and len(sending.calls) == 1


def test_a_snapshot_the_replica_has_already_completes_after_asking(env, rel, sending, replicated):
    # A retried session: the partner refuses the name, its answer shows the snapshot is there.
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    sending.results = [_refused("The replica already has a snapshot named s2")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "32", 0)
    assert len(sending.calls) == 1


def test_a_cancel_during_the_stream_asks_nothing_more(env, rel, sending, replicated):
    sending.results = [PipelineStopped(CANCELED)]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert (env.sess(sid).status, env.sess(sid).message) == (FAILED, CANCELED)
    # Only whether the stream arrived all the same (once the partner's receive ended): it did not.
    assert [(c.op, c.args) for c in env.link.calls] == [("snapshots", [rel, "settled"])]
    assert len(sending.calls) == 1


def test_a_stopped_stream_that_arrived_whole_completes_the_session(env, rel, sending, replicated):
    sending.results = [PipelineStopped(CANCELED, 4096)]
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "32", 4096)
    assert "received the whole snapshot" in row.message


def test_after_a_session_that_did_not_complete_the_partner_is_asked_first(env, rel, sending, replicated):
    # The failed session's snapshot (s2) arrived all the same: the next one sends from it.
    failed = env.session(rel, replicated.s2, status=FAILED)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    s3 = env.snapshot(env.fs, "s3", guid="333", creation=300)
    sid = _claimed(env, rel, s3)
    assert sid != failed
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert env.link.ops() == ["prepare"]
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s2", "p/fs@s3"]


def test_the_partner_is_asked_when_the_last_sent_snapshot_is_gone_here(env, rel, sending, replicated):
    del env.catalog.snapshots[replicated.s1]  # destroyed on the primary since
    env.snapshot(env.fs, "s0", guid="100", creation=50)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "30", "name": "s0", "guid": "100"}]}
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "-i", "p/fs@s0", "p/fs@s2"]]


def test_without_a_bookmark_a_deleted_last_common_snapshot_leaves_no_base_and_the_answer_says_why(
        env, rel, sending, replicated):
    del env.catalog.snapshots[replicated.s1]  # deleted here (zfs-fuse: no bookmarks)
    env.snapshot(env.fs, "s0", guid="100", creation=50)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "30", "name": "s0", "guid": "100", "createtxg": 5},
                                                   {"id": "31", "name": "s1", "guid": "111", "createtxg": 9}]}
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and sending.calls == []
    assert "snapshots newer than s0, the newest snapshot both sides hold: s1" in row.message
    assert "rollback_replica" in row.message


# -- bookmarks and holds: incrementals survive retention (OpenZFS) ---------------------------------

@pytest.fixture
def openzfs(env):
    env.ds.zfs.features = frozenset({"bookmarks", "holds"})
    return env


def test_a_completed_session_bookmarks_its_snapshot_and_drops_the_older_bookmark(openzfs, rel, sending):
    env = openzfs
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    sid = _claimed(env, rel, s1)
    env.svc.run_session(sid)
    assert env.ds.bookmarks("p/fs") == {f"vsnap-repl-{rel}-111": ("111", 100)}
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.svc.run_session(_claimed(env, rel, s2))
    assert env.ds.bookmarks("p/fs") == {f"vsnap-repl-{rel}-222": ("222", 200)}
    assert env.svc.get_relationship(rel)["last_common_snapshot"] == {"name": "s2", "guid": "222"}
    # held while sent (and its base while sent from), all released at the end
    holds = [c for c in env.ds.calls if c[0] == "hold"]
    assert holds == [("hold", f"vsnap-repl-{rel}", "p/fs@s1"), ("hold", f"vsnap-repl-{rel}", "p/fs@s2"),
                     ("hold", f"vsnap-repl-{rel}", "p/fs@s1")]
    assert not any(env.ds.held.values())


def test_the_next_incremental_goes_from_the_bookmark_once_the_snapshot_is_deleted(openzfs, rel, sending):
    env = openzfs
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.svc.run_session(_claimed(env, rel, s1))
    env.link.calls.clear()
    del env.catalog.snapshots[s1]  # backup software's retention deleted it
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED, row.message
    assert sending.calls[-1]["producer"] == ["zfs", "send", "-i", f"p/fs#vsnap-repl-{rel}-111", "p/fs@s2"]
    assert sending.calls[-1]["consumer"][-2:] == ["from", "111"]  # the snapshot it marks, by guid
    assert env.link.calls == []  # known without asking: the last session's snapshot, by its bookmark
    assert "bookmark of s1" in row.message


def test_the_bookmark_is_a_base_when_the_partner_is_asked_too(openzfs, rel, sending):
    env = openzfs
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.svc.run_session(_claimed(env, rel, s1))
    env.link.calls.clear()
    del env.catalog.snapshots[s1]
    env.session(rel, env.snapshot(env.fs, "x", guid="999", creation=150), status=FAILED, message="stalled")
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111", "createtxg": 9}]}
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert sending.calls[-1]["producer"] == ["zfs", "send", "-i", f"p/fs#vsnap-repl-{rel}-111", "p/fs@s2"]


def test_a_bookmark_not_older_than_the_snapshot_is_never_its_base(openzfs, rel, sending):
    env = openzfs
    s0 = env.snapshot(env.fs, "s0", guid="100", creation=50)
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.svc.run_session(_claimed(env, rel, s1))
    env.link.calls.clear()
    del env.catalog.snapshots[s1]
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111", "createtxg": 9}]}
    sid = _claimed(env, rel, s0)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "none in common" in row.message


def test_stale_holds_a_crash_left_are_released_before_a_session(openzfs, rel, sending):
    env = openzfs
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.ds.held["p/fs@s1"] = {f"vsnap-repl-{rel}", "someone-else"}
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.svc.run_session(_claimed(env, rel, s2))
    assert env.ds.held["p/fs@s1"] == {"someone-else"}  # only ours goes
    assert s1


def test_a_diverged_replica_fails_the_session_naming_its_snapshots(openzfs, rel, sending, replicated):
    env = openzfs
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111", "createtxg": 9},
                                                   {"id": "32", "name": "made-there", "guid": "777", "createtxg": 12}]}
    env.session(rel, env.snapshot(env.fs, "x", guid="999", creation=150), status=FAILED, message="stalled")
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and sending.calls == []
    assert "newer than s1, the newest snapshot both sides hold: made-there" in row.message


def test_a_diverged_replica_is_rolled_back_only_when_the_session_asks(openzfs, rel, sending, replicated):
    env = openzfs
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111", "createtxg": 9},
                                                   {"id": "32", "name": "made-there", "guid": "777", "createtxg": 12}]}
    env.session(rel, env.snapshot(env.fs, "x", guid="999", creation=150), status=FAILED, message="stalled")
    sid = env.session(rel, replicated.s2)
    with env.store.session() as s:
        s.get(ReplicationSession, sid).rollback_replica = True
    assert env.svc.claim_next(set()) == sid
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED
    assert sending.calls[-1]["consumer"][-6:] == ["recv", rel, "s2", "incremental", "rollback-to", "s1"]
    assert "rolled back to s1 as asked" in row.message and "made-there" in row.message


def test_the_partner_is_asked_when_sending_an_older_snapshot_than_the_last(env, rel, sending, replicated):
    s05 = env.snapshot(env.fs, "s05", guid="105", creation=60)  # older than s1, the last sent
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sid = _claimed(env, rel, s05)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "none in common" in row.message
    assert [c.op for c in env.link.calls] == ["prepare"] and sending.calls == []


def test_only_a_completed_session_tells_where_the_replica_stands(env, rel, sending):
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.session(rel, s1, status=FAILED, message="stalled")
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert sending.calls[0]["producer"] == ["zfs", "send", "p/fs@s2"]


# -- a first session: the replica's addresses, as the partner gave them, spare the round trip -----

def _new_relationship(env, addresses):
    """A relationship of the filesystem volume with P1 (partnered by the `rel` fixture of
    `sending`), made through the service, the partner's answer giving `addresses`."""
    env.svc.delete_relationship(R1)  # the fixture's own, of the same volume
    answer = replica_answer()
    if addresses is not None:
        def answer(partner, args, body, plain=answer(None, [], None)):
            return {**plain, "repl_addresses": addresses}
    env.link.answers["create-replica"] = answer
    rel_id = env.svc.create_relationship(str(env.fs), P1)["id"]
    env.link.calls.clear()
    return rel_id


def test_a_first_session_streams_at_once_to_the_address_given_with_the_replica(env, sending):
    rel = _new_relationship(env, ["10.7.0.2", "10.7.0.3"])
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.repl_address) == (COMPLETED, "10.7.0.2")
    assert env.link.calls == []
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "p/fs@s1"]
    assert call["consumer"][2] == "10.7.0.2" and call["consumer"][-1] == "full"


def test_a_first_session_uses_the_partners_address_when_it_carries_replication(env, sending):
    rel = _new_relationship(env, ["10.0.0.2", "10.7.0.2"])
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.0.0.2" and env.link.calls == []


def test_a_first_session_without_known_addresses_asks(env, sending):
    rel = _new_relationship(env, None)  # a partner that does not give them
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED and [c.op for c in env.link.calls] == ["prepare"]


def test_an_adopted_replica_refuses_the_full_stream_and_gets_the_incremental(env, sending):
    rel = _new_relationship(env, ["10.7.0.2"])
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.7.0.2"]}
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sending.results = [_refused("The replica already has snapshots: only an incremental stream can follow")]
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "p/fs@s2"],
                                                      ["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"]]
    assert s1


def test_asking_refreshes_the_addresses_for_the_next_first_session(env, sending):
    rel = _new_relationship(env, None)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.8.0.2"]}
    env.svc.run_session(_claimed(env, rel, env.snapshot(env.fs, "s1")))
    assert env.svc.partners.remembered_addresses(P1) == ["10.8.0.2"]
    env.link.answers["create-replica"] = replica_answer()  # (no addresses: an older partner)
    other = env.svc.create_relationship(str(env.lun), P1)["id"]
    env.link.calls.clear()
    sid = _claimed(env, other, env.snapshot(env.lun, "l1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.8.0.2" and env.link.calls == []


def test_the_addresses_go_with_the_partner(env, sending):
    rel = _new_relationship(env, ["10.7.0.2"])
    env.svc.delete_relationship(rel)
    assert env.svc.partners.remembered_addresses(P1) == ["10.7.0.2"]
    env.svc.delete_partner(P1)
    assert env.svc.partners.remembered_addresses(P1) is None
    with env.store.session() as s:
        assert s.get(Setting, f"partner-repl-addresses:{P1}") is None


# -- stream options and the bandwidth limit -----------------------------------------------------

def test_compressed_streams_where_both_sides_have_the_flags(env, sending):
    env.ds.zfs.features = frozenset({"compressed", "large_blocks", "embedded_data", "resumable"})
    env.svc.delete_relationship(R1)
    env.link.answers["create-replica"] = lambda partner, args, body: {
        **replica_answer()(partner, args, body), "repl_addresses": ["10.7.0.2"],
        "stream_features": ["compressed", "large_blocks", "raw"]}  # this partner lacks embedded data
    rel = env.svc.create_relationship(str(env.fs), P1)["id"]
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-c", "-L", "p/fs@s1"]


def test_plain_streams_where_either_side_lacks_the_flags(env, rel, sending):
    env.ds.zfs.features = frozenset({"compressed", "large_blocks", "embedded_data"})  # ours: OpenZFS
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.link.answers["prepare"] = {"snapshots": [], "repl_addresses": []}  # an older partner: says nothing
    env.svc.run_session(sid)
    assert sending.calls[-1]["producer"] == ["zfs", "send", "p/fs@s1"]
    env.ds.zfs.features = frozenset()  # ours: zfs-fuse; the partner has them all
    env.link.answers["prepare"] = {"snapshots": [], "repl_addresses": [],
                                   "stream_features": ["compressed", "large_blocks", "embedded_data"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s2", guid="222"))
    env.svc.run_session(sid)
    assert sending.calls[-1]["producer"][:3] == ["zfs", "send", "-i"]


def test_the_relationships_bandwidth_limit_goes_to_the_stream(env, rel, sending):
    env.svc.update_relationship(rel, max_rate=2_000_000)
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    assert sending.calls[-1]["max_rate"] == 2_000_000
    env.svc.update_relationship(rel, max_rate=None)
    sid = _claimed(env, rel, env.snapshot(env.fs, "s2", guid="222"))
    env.svc.run_session(sid)
    assert sending.calls[-1]["max_rate"] is None


# -- resuming an interrupted transfer (OpenZFS: receive -s, send -t) -----------------------------

TOKEN = "1-e3b1d5f9a-c8-789c636064000310a500c4ec50360710e72765a5269740f80cd8e4d3d28a534b40"


@pytest.fixture
def broken_off(env, rel, sending):
    """Both sides resume; the replica kept part of a stream (the partner tells its token)."""
    env.ds.zfs.features = frozenset({"resumable"})
    env.link.answers["snapshots"] = {"snapshots": [], "resume_token": TOKEN}
    return sending


def test_the_same_snapshot_goes_on_where_the_stream_stopped(env, rel, broken_off):
    snap = env.snapshot(env.fs, "s1", guid="111")
    env.ds.targets[TOKEN] = ("111", 600_000)
    sid = _claimed(env, rel, snap)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED, row.message
    (call,) = broken_off.calls
    assert call["producer"] == ["zfs", "send", "-t", TOKEN]
    assert call["consumer"][-3:] == [rel, "s1", "resume"]
    body = env.svc.get_session(sid)
    assert (body["size_sent"], body["size_sent_total"]) == ("4096", str(600_000 + 4096))
    assert "resumed the interrupted transfer, 600000 bytes" in row.message


def test_an_older_snapshots_stream_is_finished_first_then_the_difference_is_sent(env, rel, broken_off):
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    first = _claimed(env, rel, s1)
    env.svc.sessions.end(first, "FAILED", "Interrupted")  # it broke off; the replica kept part of it
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.ds.targets[TOKEN] = ("111", 50_000)
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED, row.message
    resumed, incremental = broken_off.calls
    assert resumed["producer"] == ["zfs", "send", "-t", TOKEN] and resumed["consumer"][-3:] == [rel, "s1", "resume"]
    assert incremental["producer"] == ["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"]
    assert incremental["consumer"][-3:] == ["incremental", "from", "111"]
    assert row.size_sent == 2 * 4096 and "of s1" in row.message and row.message.endswith("first")


def test_a_token_that_no_longer_works_is_dropped_and_the_snapshot_sent_from_the_start(env, rel, broken_off):
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))  # no target: its snapshot is gone here
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED and "no longer works" in row.message and "from the start" in row.message
    (call,) = broken_off.calls
    assert call["producer"] == ["zfs", "send", "p/fs@s1"] and call["consumer"][-1] == "full"
    assert env.svc.get_session(sid)["size_sent_total"] == "4096"


def test_a_resume_the_partner_refuses_falls_back_to_the_whole_stream(env, rel, broken_off):
    env.ds.targets[TOKEN] = ("111", 600_000)
    broken_off.results = [PipelineResult(10, 0, "", 1, "", json.dumps({"error": "checksum mismatch"}))]
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED and "resuming the interrupted transfer failed" in row.message
    resumed, whole = broken_off.calls
    assert resumed["consumer"][-1] == "resume" and whole["consumer"][-1] == "full"
    assert row.size_resumed is None and env.svc.get_session(sid)["size_sent_total"] == "4096"


def test_without_resumable_zfs_here_the_token_is_dropped(env, rel, broken_off):
    env.ds.zfs.features = frozenset()
    env.ds.targets[TOKEN] = ("111", 600_000)
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == COMPLETED and "cannot resume" in row.message
    assert broken_off.calls[0]["consumer"][-1] == "full"


# -- an encrypted volume: raw, or not at all ----------------------------------------------------

def test_an_encrypted_volume_is_sent_raw_to_a_partner_that_receives_raw(env, rel, sending):
    env.ds.zfs.features = frozenset({"compressed", "raw", "encryption"})
    env.ds.encrypted_datasets.add("p/fs")
    env.link.answers["prepare"] = {"snapshots": [], "repl_addresses": [], "stream_features": ["compressed", "raw"]}
    s1 = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111", creation=100))
    env.svc.run_session(s1)
    assert env.sess(s1).status == COMPLETED
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-w", "-c", "p/fs@s1"]
    assert call["consumer"][-4:] == ["recv", rel, "s1", "full-raw"]
    s2 = _claimed(env, rel, env.snapshot(env.fs, "s2", guid="222", creation=200))
    env.svc.run_session(s2)
    assert sending.calls[-1]["producer"] == ["zfs", "send", "-w", "-c", "-i", "p/fs@s1", "p/fs@s2"]
    assert sending.calls[-1]["consumer"][-3:] == ["incremental", "from", "111"]


@pytest.mark.parametrize("partner_says", [None, ["compressed", "large_blocks"]])
def test_an_encrypted_volume_is_never_sent_decrypted(env, rel, sending, partner_says):
    """A partner that does not say it receives raw (an older one, or zfs-fuse) gets nothing: it
    is asked before any stream leaves, and the session fails naming why."""
    env.ds.zfs.features = frozenset({"compressed", "large_blocks", "raw", "encryption"})
    env.ds.encrypted_datasets.add("p/fs")
    env.link.answers["prepare"] = {"snapshots": [], "repl_addresses": [],
                                   **({"stream_features": partner_says} if partner_says is not None else {})}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "encrypted" in row.message and "never sent decrypted" in row.message
    assert sending.calls == []
    assert [c.op for c in env.link.calls] == ["prepare"]


def test_an_encrypted_volume_is_not_sent_where_this_zfs_cannot_send_raw(env, rel, sending):
    env.ds.zfs.features = frozenset({"compressed"})
    env.ds.encrypted_datasets.add("p/fs")
    env.link.answers["prepare"] = {"snapshots": [], "repl_addresses": [], "stream_features": ["raw"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == FAILED and sending.calls == []
