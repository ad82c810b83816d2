"""Relationships (relationships.py), through ReplicationService: create, list, get and delete (all
or nothing with the partner; an interrupted delete finished or rolled back), and the guards on
volume delete and rename and on pool delete. Fakes and fixtures: replication_support.py."""
from __future__ import annotations

import logging

import pytest

from vsnap.errors import ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from vsnap.services.owner import current_owner
from vsnap.services.replication import PENDING, PRIMARY, REPLICA, RemoteError
from vsnap.store.models import Relationship, Setting

import replication_support
from replication_support import GIB, P1, P2, R1, R2, replica_answer

# The fixtures of replication_support these tests take, bound here for pytest to find (imported
# by name, each would read to ruff as redefined by every test's parameter of that name).
env = replication_support.env


# =============================================================================================
# relationships
# =============================================================================================

def test_create_relationship_filesystem(env):
    env.partner(P1)
    env.link.answers["create-replica"] = replica_answer()
    body = env.svc.create_relationship(str(env.fs), P1, remote_pool_id="5", remote_vol_name="copy")
    (call,) = env.link.calls
    assert call.op == "create-replica" and call.partner_id == P1
    rel_id = call.body["rel_id"]
    assert call.body == {"rel_id": rel_id, "pool_id": "5", "name": "copy", "reuse": False,
                         "volume_type": "filesystem", "size_total": None, "size_block": None,
                         "primary_vol_id": str(env.fs), "primary_vol_name": "fs",
                         "primary_pool_id": str(env.p.id)}
    assert len(rel_id) == 32
    assert body == {
        "id": rel_id, "local_pool_id": str(env.p.id), "local_role": PRIMARY, "local_vol_id": str(env.fs),
        "local_vol_name": "fs", "partner_id": P1, "remote_pool_id": "5", "remote_vol_id": "42",
        "remote_vol_name": "fs_replica", "last_sync_status": None, "last_attempt_snap_id": None,
        "last_success_snap_id": None, "max_rate": None, "last_common_snapshot": None,
        "time_created": body["time_created"],
        "time_updated": body["time_updated"],
    }
    assert env.svc.get_relationship(rel_id) == body
    assert env.lock.taken >= 1


def test_create_relationship_lun_sends_its_size(env):
    env.partner(P1)
    env.link.answers["create-replica"] = replica_answer(name="lun1_replica")
    env.svc.create_relationship(env.lun, P1, reuse=True)
    body = env.link.calls[0].body
    assert (body["volume_type"], body["size_total"], body["size_block"], body["reuse"]) == ("lun", 3 * GIB, 8192, True)
    assert body["pool_id"] is None and body["name"] is None


def test_create_relationship_refuses_filebackedlun(env):
    env.partner(P1)
    with pytest.raises(ValidationError, match="filebackedlun"):
        env.svc.create_relationship(env.fb, P1)
    assert env.link.calls == [] and env.rels() == {}


def test_create_relationship_refuses_a_replica_as_source(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.relationship(env.fs, P2, REPLICA)
    with pytest.raises(ConflictError, match="replica"):
        env.svc.create_relationship(env.fs, P1)
    assert env.link.calls == [] and len(env.rels()) == 1


def test_create_relationship_one_per_partner(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.link.answers["create-replica"] = replica_answer()
    env.svc.create_relationship(env.fs, P1)
    with pytest.raises(ConflictError, match="already replicated"):
        env.svc.create_relationship(env.fs, P1)
    assert len(env.rels()) == 1 and len(env.link.calls) == 1
    env.svc.create_relationship(env.fs, P2)  # another partner is fine
    assert len(env.rels()) == 2


@pytest.mark.parametrize("vol_id, partner_id, error", [(999, P1, NotFoundError), ("abc", P1, NotFoundError),
                                                       (None, P2, NotFoundError), (None, "x", NotFoundError)])
def test_create_relationship_unknown(env, vol_id, partner_id, error):
    env.partner(P1)
    with pytest.raises(error):
        env.svc.create_relationship(vol_id if vol_id is not None else env.fs, partner_id)
    assert env.link.calls == [] and env.rels() == {}


@pytest.mark.parametrize("name", ["-x", "a/b", "a b", "", "x" * 300])
def test_create_relationship_bad_remote_name(env, name):
    env.partner(P1)
    with pytest.raises(ValidationError):
        env.svc.create_relationship(env.fs, P1, remote_vol_name=name)
    assert env.link.calls == []


def test_create_relationship_partner_unreachable(env):
    env.partner(P1)
    env.link.answers["create-replica"] = RemoteError("unreachable over SSH", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}


def test_create_relationship_partner_refuses(env):
    env.partner(P1)
    env.link.answers["create-replica"] = RemoteError("partner refused create-replica: name taken")
    with pytest.raises(ConflictError, match="name taken"):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}


def test_create_relationship_bad_answer_tells_the_partner(env):
    env.partner(P1)
    env.link.answers["create-replica"] = {"vol_id": "1"}  # no pool_id, no vol_name
    with pytest.raises(Exception):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}
    assert env.link.ops() == ["create-replica", "delete-relationship"]
    assert env.link.calls[1].args == [env.link.calls[0].body["rel_id"], "0"]


def test_list_relationships(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    a = env.relationship(env.fs, P1, rel_id=R1)
    b = env.relationship(env.lun, P1, REPLICA, rel_id=R2)
    c = env.relationship(env.fs, P2)
    everything = env.svc.list_relationships()
    assert {r["id"] for r in everything} == {a, b, c}
    assert {r["id"] for r in env.svc.list_relationships(vol_id=env.fs)} == {a, c}
    assert {r["id"] for r in env.svc.list_relationships(vol_id=str(env.lun))} == {b}
    assert {r["id"] for r in env.svc.list_relationships(vol_name="lun1")} == {b}
    assert env.svc.list_relationships(vol_name="fb") == []
    roles = {r["id"]: r["local_role"] for r in everything}
    assert roles == {a: PRIMARY, b: REPLICA, c: PRIMARY}
    with pytest.raises(NotFoundError):
        env.svc.list_relationships(vol_id=999)
    with pytest.raises(NotFoundError):
        env.svc.list_relationships(vol_name="nope")


@pytest.mark.parametrize("rel_id", [R2, "x", "", None, R1 + "0"])
def test_get_relationship_unknown(env, rel_id):
    env.partner(P1)
    env.relationship(env.fs, P1, rel_id=R1)
    with pytest.raises(NotFoundError):
        env.svc.get_relationship(rel_id)


@pytest.mark.parametrize("preserve, flag", [(False, "0"), (True, "1")])
def test_delete_relationship_on_the_primary(env, preserve, flag):
    env.partner(P1)
    rel = env.relationship(env.fs, P1, rel_id=R1)
    snap = env.snapshot(env.fs, "s1")
    pending = env.session(rel, snap)
    env.svc.delete_relationship(rel, preserve_replica=preserve)
    (call,) = env.link.calls
    assert (call.op, call.partner_id, call.args) == ("delete-relationship", P1, [rel, flag])
    assert env.rels() == {}
    assert env.sess(pending) is None  # its sessions go with it
    assert env.volumes.deleted == []  # the primary volume stays


def test_delete_relationship_primary_partner_unreachable(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.delete_relationship(rel)
    assert set(env.rels()) == {rel}


def test_delete_relationship_that_fails_leaves_the_queue(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    pending = env.session(rel, env.snapshot(env.fs, "s1"))
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.delete_relationship(rel)
    assert env.sess(pending).status == PENDING


def test_delete_relationship_primary_partner_refuses(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("partner refused delete-relationship: busy")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.delete_relationship(rel)
    assert set(env.rels()) == {rel}


def test_delete_relationship_primary_partner_no_longer_knows_it_names_the_choice(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError(f"partner refused: Relationship {rel} not found",
                                                          unknown=True)
    with pytest.raises(ConflictError) as info:
        env.svc.delete_relationship(rel)
    assert "preserve_replica=true" in info.value.message and "does not know" in info.value.message
    assert set(env.rels()) == {rel} and env.rels()[rel].state == "ready"
    env.svc.delete_relationship(rel, preserve_replica=True)
    assert env.rels() == {}


@pytest.mark.parametrize("error", [RemoteError("Permission denied (publickey)", untrusted=True),
                                   RemoteError("no route", unreachable=True)])
def test_delete_relationship_with_preserve_needs_no_partner(env, error):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = error
    with pytest.raises(ConflictError if error.untrusted else ServiceUnavailableError) as info:
        env.svc.delete_relationship(rel)
    assert "preserve_replica=true" in info.value.message
    assert set(env.rels()) == {rel}
    env.svc.delete_relationship(rel, preserve_replica=True)
    assert env.rels() == {}
    notices = env.svc.partners._notice_key(P1, rel)
    with env.store.session() as s:
        assert (s.get(Setting, notices) is not None) == (not error.untrusted)  # told when it answers
    env.link.answers["delete-relationship"] = {}
    env.svc.deliver_notices()
    assert env.link.calls[-1].op == "delete-relationship" and env.link.calls[-1].args == [rel, "1"] \
        or error.untrusted
    with env.store.session() as s:
        assert s.get(Setting, notices) is None


def test_an_interrupted_delete_whose_partner_side_went_is_finished(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    with env.store.session() as s:  # as a delete killed after the partner's side was deleted leaves it
        row = s.get(Relationship, rel)
        row.state, row.delete_preserve, row.owner = "deleting", False, "999999999:1"
    env.link.answers["delete-relationship"] = RemoteError(f"Relationship {rel} not found", unknown=True)
    env.svc.recover_deletes()
    assert env.rels() == {}


def test_a_partner_that_stops_while_deleting_leaves_the_delete_pending(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("the appliance's server stopped while answering",
                                                          refused=False)
    with pytest.raises(ServiceUnavailableError, match="finished when it answers"):
        env.svc.delete_relationship(rel)
    row = env.rels()[rel]
    assert (row.state, row.owner) == ("deleting", None)  # for the worker, or a retried DELETE
    env.link.answers["delete-relationship"] = RemoteError(f"Relationship {rel} not found", unknown=True)
    env.svc.recover_deletes()  # its side went: the delete is finished here
    assert env.rels() == {}


def test_an_interrupted_delete_the_partner_refuses_is_rolled_back(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    with env.store.session() as s:
        row = s.get(Relationship, rel)
        row.state, row.delete_preserve, row.owner = "deleting", False, "999999999:1"
    env.link.answers["delete-relationship"] = RemoteError("the replica volume has a clone")
    env.svc.recover_deletes()
    assert env.rels()[rel].state == "ready" and env.rels()[rel].owner is None


def test_a_relationship_being_deleted_takes_no_session(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    pending = env.session(rel, env.snapshot(env.fs, "s1"))
    with env.store.session() as s:
        row = s.get(Relationship, rel)
        row.state, row.owner = "deleting", current_owner()
    assert env.svc.claim_next(set()) is None
    with pytest.raises(ConflictError):
        env.svc.start_session(rel)
    with pytest.raises(ConflictError, match="being deleted"):
        env.svc.delete_relationship(rel)
    assert env.sess(pending).status == PENDING


@pytest.mark.parametrize("preserve", [False, True])
def test_delete_relationship_on_the_replica(env, preserve):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    rel = env.relationship(replica, P1, REPLICA)
    env.svc.delete_relationship(rel, preserve_replica=preserve)
    assert env.rels() == {}
    assert env.volumes.deleted == ([] if preserve else [replica])
    (call,) = env.link.calls
    assert (call.op, call.args) == ("delete-relationship", [rel, "1"])  # the primary volume is kept


def test_delete_relationship_on_the_replica_partner_unreachable(env, caplog):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    rel = env.relationship(replica, P1, REPLICA)
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        env.svc.delete_relationship(rel)
    assert env.rels() == {} and env.volumes.deleted == [replica]
    assert any("told when it answers" in r.getMessage() for r in caplog.records)
    with env.store.session() as s:
        assert s.get(Setting, env.svc.partners._notice_key(P1, rel)) is not None


# =============================================================================================
# guards
# =============================================================================================

def test_volume_delete_guard(env):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    env.relationship(env.fs, P1)
    env.relationship(replica, P1, REPLICA)
    for vol_id in (env.fs, replica):
        with pytest.raises(ConflictError, match="delete the relationship first"):
            env.attachments.refuse_volume_delete(vol_id)
    env.attachments.refuse_volume_delete(env.lun)  # not replicated: fine


def test_rename_guard_only_for_replicas(env):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    env.relationship(env.fs, P1)
    env.relationship(replica, P1, REPLICA)
    with pytest.raises(ConflictError, match="cannot be renamed"):
        env.attachments.refuse_volume_rename(replica)
    env.attachments.refuse_volume_rename(env.fs)
    env.attachments.refuse_volume_rename(env.lun)
    assert env.svc.is_replica(replica) and not env.svc.is_replica(env.fs)


def test_pool_delete_guard(env):
    env.partner(P1)
    q = env.pool("q")
    other = env.volume(q, "other")
    env.relationship(env.fs, P1)
    with pytest.raises(ConflictError, match="relationships"):
        env.attachments.refuse_pool_delete(env.p.id, "p")
    env.attachments.refuse_pool_delete(q.id, "q")
    env.relationship(other, P1, REPLICA)
    with pytest.raises(ConflictError):
        env.attachments.refuse_pool_delete(q.id, "q")


def test_a_bandwidth_limit_at_create_and_update_on_the_primary_only(env):
    env.partner(P1)
    env.link.answers["create-replica"] = replica_answer()
    body = env.svc.create_relationship(str(env.fs), P1, max_rate=1_000_000)
    assert body["max_rate"] == "1000000"
    assert env.rels()[body["id"]].max_rate == 1_000_000
    changed = env.svc.update_relationship(body["id"], max_rate=5000)
    assert changed["max_rate"] == "5000" and env.svc.get_relationship(body["id"]) == changed
    assert env.svc.update_relationship(body["id"], max_rate=None)["max_rate"] is None
    replica = env.relationship(env.volume(env.p, "fs_replica"), P1, REPLICA)
    with pytest.raises(ConflictError, match="primary"):
        env.svc.update_relationship(replica, max_rate=5000)
    assert env.rels()[replica].max_rate is None
    with pytest.raises(NotFoundError):
        env.svc.update_relationship("0" * 32, max_rate=5000)


def test_the_replicas_stream_features_are_remembered_at_create(env):
    env.partner(P1)
    env.link.answers["create-replica"] = lambda partner, args, body: {
        **replica_answer()(partner, args, body), "stream_features": ["compressed"]}
    env.svc.create_relationship(str(env.fs), P1)
    assert env.svc.partners.remembered_features(P1) == frozenset({"compressed"})
    env.svc.partners.remember_features(P1, "compressed")  # not a list: an answer that says nothing usable
    assert env.svc.partners.remembered_features(P1) == frozenset()


def test_deleting_a_relationship_removes_its_bookmarks_and_holds_and_no_one_elses(env):
    env.ds.zfs.features = frozenset({"bookmarks", "holds"})
    env.partner(P1)
    rel = env.relationship(env.fs, P1, rel_id=R1)
    env.snapshot(env.fs, "s1", guid="111", creation=10)
    env.ds.bookmarked["p/fs"] = {f"vsnap-repl-{R1}-111": ("111", 10), f"vsnap-repl-{R2}-111": ("111", 10),
                                 "admins-own": ("111", 10)}
    env.ds.held["p/fs@s1"] = {f"vsnap-repl-{R1}", "admins-own"}
    env.svc.delete_relationship(rel)
    assert env.rels() == {}
    assert set(env.ds.bookmarked["p/fs"]) == {f"vsnap-repl-{R2}-111", "admins-own"}
    assert env.ds.held["p/fs@s1"] == {"admins-own"}


def test_a_refused_delete_keeps_the_bookmarks(env):
    env.ds.zfs.features = frozenset({"bookmarks", "holds"})
    env.partner(P1)
    rel = env.relationship(env.fs, P1, rel_id=R1)
    env.ds.bookmarked["p/fs"] = {f"vsnap-repl-{R1}-111": ("111", 10)}
    env.link.answers["delete-relationship"] = RemoteError("partner refused delete-relationship: busy")
    with pytest.raises(ConflictError):
        env.svc.delete_relationship(rel)
    assert set(env.ds.bookmarked["p/fs"]) == {f"vsnap-repl-{R1}-111"}
