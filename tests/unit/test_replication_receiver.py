"""The receiving side (receiver.py), through ReplicationService.serve: the requests a partner makes
over SSH (info, snapshots, prepare, recv, delete-relationship, unpartner, create-replica).
Fakes and fixtures: replication_support.py."""
from __future__ import annotations

import json
import logging

import pytest

from vsnap.drivers.runner import CommandError
from vsnap.errors import ConflictError, NotFoundError, ValidationError
from vsnap.services.replication import PRIMARY, REPLICA
from vsnap.store.models import Volume

import replication_support
from replication_support import GIB, OUR_SYS, P1, P2, R1, R2

# The fixtures of replication_support these tests take, bound here for pytest to find (imported
# by name, each would read to ruff as redefined by every test's parameter of that name).
env = replication_support.env


# =============================================================================================
# serve(): the requests a partner makes over SSH
# =============================================================================================

@pytest.fixture
def replica(env):
    """This appliance as the replica side: partner P1 replicates its volume 77 into fs_replica."""
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    vol = env.volume(env.p, "fs_replica")
    env.replica_vol = vol
    return env.relationship(vol, P1, REPLICA, rel_id=R1)


@pytest.fixture
def stream(tmp_path):
    f = open(tmp_path / "stream", "w+b")
    yield f
    f.close()


def test_serve_unknown_partner(env, replica, stream):
    with pytest.raises(NotFoundError):
        env.svc.serve("9" * 32, ["info"], stream)


def test_serve_info(env, replica, stream):
    assert env.svc.serve(P1, ["info"], stream) == {"system_id": OUR_SYS,
                                                   "repl_addresses": ["10.0.0.1", "10.2.0.1", "10.2.0.9"],
                                                   "stream_features": []}
    env.ds.zfs.features = frozenset({"compressed", "resumable"})  # OpenZFS's, say
    assert env.svc.serve(P1, ["info"], stream)["stream_features"] == ["compressed", "resumable"]


def test_an_appliance_with_an_encrypted_pool_takes_no_embedded_data_streams(env, replica, stream):
    # ZFS refuses send -e into an encrypted dataset unless the stream is raw
    env.ds.zfs.features = frozenset({"compressed", "embedded_data", "raw"})
    assert env.svc.serve(P1, ["info"], stream)["stream_features"] == ["compressed", "embedded_data", "raw"]
    env.ds.encrypted_datasets.add("p")
    assert env.svc.serve(P1, ["info"], stream)["stream_features"] == ["compressed", "raw"]


@pytest.mark.parametrize("words", [
    [], [""], ["rm", "-rf", "/"], ["INFO"], ["snapshots"], ["snapshots", R1, "x"],
    ["recv", R1, "s1"], ["recv", R1, "s1", "both"], ["recv", R1, "s1", "full", "x"],
    ["delete-relationship", R1], ["delete-relationship", R1, "2"], ["delete-relationship", R1, "1", "x"],
    ["delete-relationship", R1, "true"],
])
def test_serve_refuses_unknown_requests(env, replica, stream, words):
    with pytest.raises(ValidationError):
        env.svc.serve(P1, words, stream)
    assert set(env.rels()) == {R1} and env.ds.calls == []


def test_serve_snapshots(env, replica, stream):
    b = env.snapshot(env.replica_vol, "s2", guid="222", creation=20)
    a = env.snapshot(env.replica_vol, "s1", guid="111", creation=10)
    env.snapshot(env.fs, "other", guid="999")
    # oldest first, by when each was taken (its createtxg), whatever their ids
    assert env.svc.serve(P1, ["snapshots", R1], stream) == {"snapshots": [
        {"id": str(a), "name": "s1", "guid": "111", "createtxg": 10},
        {"id": str(b), "name": "s2", "guid": "222", "createtxg": 20}]}


def test_serve_relationship_of_another_partner(env, replica, stream):
    for words in (["snapshots", R1], ["recv", R1, "s1", "full"], ["delete-relationship", R1, "0"]):
        with pytest.raises(NotFoundError):
            env.svc.serve(P2, words, stream)
    assert set(env.rels()) == {R1} and env.ds.calls == [] and env.volumes.deleted == []


@pytest.mark.parametrize("rel_id", [R2, "x", "../" + R1[3:], R1[:-1]])
def test_serve_unknown_relationship(env, replica, stream, rel_id):
    with pytest.raises(NotFoundError):
        env.svc.serve(P1, ["snapshots", rel_id], stream)


def test_serve_only_a_replica_receives(env, replica, stream):
    primary = env.relationship(env.fs, P1, PRIMARY, rel_id=R2)
    for words in (["snapshots", primary], ["recv", primary, "s1", "full"]):
        with pytest.raises(NotFoundError):
            env.svc.serve(P1, words, stream)
    assert env.ds.calls == []


def test_serve_full_receive(env, replica, stream):
    answer = env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    (snap,) = [s for s in env.catalog.snapshots.values() if s.volume.row.id == env.replica_vol]
    assert answer == {"snap_id": str(snap.row.id)}
    assert env.ds.calls == [("unmount", "p/fs_replica"), ("receive", "p/fs_replica@s1", True, stream.fileno()),
                            ("mount", "p/fs_replica")]


def test_serve_reads_only_the_replicas_pool(env, replica, stream):
    other = env.pool("q")
    env.volume(other, "elsewhere")
    env.snapshot(env.replica_vol, "s1", guid="111")
    env.catalog.load_args.clear()
    env.svc.serve(P1, ["prepare", R1], stream)
    env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert env.catalog.load_args and set(env.catalog.load_args) == {env.p.id}


def test_serve_incremental_receive(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    answer = env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert env.ds.calls == [("unmount", "p/fs_replica"), ("receive", "p/fs_replica@s2", False, stream.fileno()),
                            ("mount", "p/fs_replica")]
    assert answer["snap_id"] == str(max(env.catalog.snapshots))


def test_serve_receive_into_a_zvol_neither_unmounts_nor_mounts(env, replica, stream):
    lun = env.volume(env.p, "lun_replica", "lun")
    env.relationship(lun, P1, REPLICA, rel_id=R2)
    env.svc.serve(P1, ["recv", R2, "s1", "full"], stream)
    assert env.ds.calls == [("receive", "p/lun_replica@s1", True, stream.fileno())]


def test_serve_incremental_receive_into_a_busy_replica(env, replica, stream):
    # A replica in use (e.g. shared) cannot be unmounted: an incremental is received anyway.
    env.snapshot(env.replica_vol, "s1")
    env.ds.unmount_error = CommandError(["zfs", "unmount"], 1, "", "cannot unmount: pool or dataset is busy")
    env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert [c[0] for c in env.ds.calls] == ["unmount", "receive", "mount"]


def test_serve_full_receive_needs_the_unmount(env, replica, stream):
    env.ds.unmount_error = CommandError(["zfs", "unmount"], 1, "", "cannot unmount: pool or dataset is busy")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert [c[0] for c in env.ds.calls] == ["unmount"]


def test_serve_receive_existing_snapshot_name(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    with pytest.raises(ConflictError, match="already has a snapshot named s1"):
        env.svc.serve(P1, ["recv", R1, "s1", "incremental"], stream)
    assert env.ds.calls == []


def test_serve_full_stream_onto_a_replica_with_snapshots(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    with pytest.raises(ConflictError, match="only an incremental"):
        env.svc.serve(P1, ["recv", R1, "s2", "full"], stream)
    assert env.ds.calls == []


def test_serve_receive_failure_remounts(env, replica, stream):
    env.ds.receive_error = CommandError(["zfs", "receive"], 1, "", "cannot receive: invalid stream")
    with pytest.raises(ConflictError, match="invalid stream"):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert env.ds.calls[-1] == ("mount", "p/fs_replica")


@pytest.mark.parametrize("name", ["-F", "a/b", "a@b", "x y", "$(id)"])
def test_serve_receive_bad_snapshot_name(env, replica, stream, name):
    with pytest.raises(ValidationError):
        env.svc.serve(P1, ["recv", R1, name, "full"], stream)
    assert env.ds.calls == []


def test_serve_receive_replica_volume_gone(env, replica, stream):
    del env.catalog.volumes[env.replica_vol]
    with pytest.raises(NotFoundError):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)


@pytest.mark.parametrize("flag, deleted", [("0", True), ("1", False)])
def test_serve_delete_relationship_replica(env, replica, stream, flag, deleted):
    assert env.svc.serve(P1, ["delete-relationship", R1, flag], stream) == {}
    assert env.rels() == {}
    assert env.volumes.deleted == ([env.replica_vol] if deleted else [])
    assert env.link.calls == []  # the partner asked: nothing to tell it


def test_serve_delete_relationship_primary_keeps_the_volume(env, replica, stream):
    primary = env.relationship(env.fs, P1, PRIMARY, rel_id=R2)
    sid = env.session(primary, env.snapshot(env.fs, "s1"))
    env.svc.serve(P1, ["delete-relationship", primary, "0"], stream)
    assert set(env.rels()) == {R1} and env.volumes.deleted == []
    assert env.sess(sid) is None


def test_serve_unpartner(env, replica, stream):
    with pytest.raises(ConflictError):
        env.svc.serve(P1, ["unpartner"], stream)
    assert set(env.partners()) == {P1, P2}
    assert env.svc.serve(P2, ["unpartner"], stream) == {}
    assert set(env.partners()) == {P1}
    assert P2 not in env.ssh.authorized and P2 not in env.ssh.pinned


def _create_replica(env, stream, partner=P1, **over):
    req = {"rel_id": R2, "volume_type": "filesystem", "primary_vol_name": "data", "primary_vol_id": "7",
           "primary_pool_id": "3"}
    req.update(over)
    stream.seek(0)
    stream.truncate()
    stream.write(json.dumps(req).encode())
    stream.seek(0)
    return env.svc.serve(partner, ["create-replica"], stream)


def test_serve_create_replica(env, replica, stream):
    answer = _create_replica(env, stream)
    vol = env.volumes.created[-1]
    assert vol == {"name": "data_replica", "volume_type": "filesystem", "pool_id": str(env.p.id),
                   "size_total": None, "size_block": None}
    # clients must not change a replica: read-only, and no atime updates
    assert ("set", "p/data_replica", "readonly", "on") in env.ds.calls
    assert ("set", "p/data_replica", "atime", "off") in env.ds.calls
    assert answer["vol_name"] == "data_replica" and answer["pool_id"] == str(env.p.id)
    assert answer["repl_addresses"] == ["10.0.0.1", "10.2.0.1", "10.2.0.9"]  # its first stream goes there
    r = env.rels()[R2]
    assert (r.partner_id, r.local_role, str(r.local_vol_id), r.remote_vol_id, r.remote_pool_id,
            r.remote_vol_name) == (P1, REPLICA, answer["vol_id"], "7", "3", "data")


def test_serve_create_replica_without_its_addresses(env, replica, stream, caplog):
    def broken():
        raise CommandError(["ip", "-j", "addr", "show"], 1, "", "ip: cannot open netlink socket")
    env.network.list = broken
    with caplog.at_level(logging.WARNING):
        answer = _create_replica(env, stream)
    assert "repl_addresses" not in answer and answer["vol_name"] == "data_replica"
    assert R2 in env.rels() and "netlink" in caplog.text


def test_serve_create_replica_lun(env, replica, stream):
    _create_replica(env, stream, volume_type="lun", size_total=GIB, size_block=4096, name="copy")
    vol = env.volumes.created[-1]
    assert (vol["name"], vol["volume_type"], vol["size_total"], vol["size_block"]) == ("copy", "lun", GIB, 4096)
    # A zvol has no access times (OpenZFS refuses atime on it): read-only is what keeps it unchanged.
    assert ("set", "p/copy", "readonly", "on") in env.ds.calls
    assert not [c for c in env.ds.calls if c[:3] == ("set", "p/copy", "atime")]


def test_serve_create_replica_lun_without_zvols_is_a_filesystem_with_atime_off(env, replica, stream):
    env.ds.has_zvols = False  # zfs-fuse: the LUN's image lives in a filesystem of its own
    _create_replica(env, stream, volume_type="lun", size_total=GIB, name="copy")
    assert ("set", "p/copy", "atime", "off") in env.ds.calls


def test_serve_create_replica_that_zfs_refuses_leaves_no_replica(env, replica, stream):
    env.ds.set_error = CommandError(["zfs", "set", "readonly=on", "p/data_replica"], 1, "", "cannot set property")
    with pytest.raises(CommandError):
        _create_replica(env, stream)
    made = env.volumes.created[-1]["name"]
    assert made == "data_replica" and env.volumes.deleted  # the volume it made went again
    assert R2 not in env.rels()


def test_serve_create_replica_existing_name(env, replica, stream):
    env.volume(env.p, "data_replica")
    with pytest.raises(ConflictError, match="reuse"):
        _create_replica(env, stream)
    assert R2 not in env.rels() and env.volumes.created == []


def test_serve_create_replica_reuse(env, replica, stream):
    vol = env.volume(env.p, "data_replica")
    answer = _create_replica(env, stream, reuse=True)
    assert answer["vol_id"] == str(vol) and env.volumes.created == []
    assert env.rels()[R2].local_vol_id == vol


def test_serve_create_replica_reuse_of_a_different_type(env, replica, stream):
    env.volume(env.p, "data_replica", "lun")
    with pytest.raises(ConflictError, match="not a filesystem"):
        _create_replica(env, stream, reuse=True)
    assert R2 not in env.rels()


def test_serve_create_replica_reuse_of_a_volume_in_another_relationship(env, replica, stream):
    with pytest.raises(ConflictError, match="belongs to relationship"):
        _create_replica(env, stream, name="fs_replica", reuse=True)
    assert set(env.rels()) == {R1}


def test_serve_create_replica_pools(env, replica, stream):
    q = env.pool("q")
    with pytest.raises(ValidationError, match="2 pools"):
        _create_replica(env, stream)
    with pytest.raises(NotFoundError):
        _create_replica(env, stream, pool_id="999")
    answer = _create_replica(env, stream, pool_id=str(q.id))
    assert answer["pool_id"] == str(q.id)


@pytest.mark.parametrize("change", [{"rel_id": "x"}, {"rel_id": None}, {"volume_type": "filebackedlun"},
                                    {"volume_type": None}, {"primary_vol_name": "-x"}, {"name": "a/b"}])
def test_serve_create_replica_bad_requests(env, replica, stream, change):
    with pytest.raises(ValidationError):
        _create_replica(env, stream, **change)
    assert env.volumes.created == [] and R2 not in env.rels()


# -- resumable receives (OpenZFS: receive -s) -------------------------------------------------

TOKEN = "1-e3b1d5f9a-c8-789c636064000310a500c4ec50360710e72765a5269740f80cd8e4d3d28a534b40"


@pytest.fixture
def resumable(env):
    env.ds.zfs.features = frozenset({"resumable"})
    return env


def test_the_replicas_resume_token_is_told_where_zfs_resumes(env, replica, stream):
    assert "resume_token" not in env.svc.serve(P1, ["prepare", R1], stream)  # zfs-fuse: nothing to tell
    env.ds.zfs.features = frozenset({"resumable"})
    assert env.svc.serve(P1, ["prepare", R1], stream)["resume_token"] is None
    env.ds.tokens["p/fs_replica"] = TOKEN
    assert env.svc.serve(P1, ["snapshots", R1], stream)["resume_token"] == TOKEN


def test_receives_keep_what_arrives_where_zfs_resumes(resumable, replica, stream):
    env = resumable
    env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert [c for c in env.ds.calls if c[0] == "receive"] == [
        ("receive", "p/fs_replica@s1", True, stream.fileno(), "resumable")]


def test_a_stream_from_the_start_drops_an_interrupted_ones_state_first(resumable, replica, stream):
    env = resumable
    env.ds.tokens["p/fs_replica"] = TOKEN
    env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    kinds = [c[0] for c in env.ds.calls if c[0] in ("abort", "receive")]
    assert kinds == ["abort", "receive"] and env.ds.calls[[c[0] for c in env.ds.calls].index("abort")][1] == \
        "p/fs_replica"


def test_a_resumed_stream_goes_on_from_the_token_and_needs_one(resumable, replica, stream):
    env = resumable
    with pytest.raises(ConflictError, match="no interrupted transfer"):
        env.svc.serve(P1, ["recv", R1, "s1", "resume"], stream)
    assert not [c for c in env.ds.calls if c[0] in ("abort", "receive")]
    env.ds.tokens["p/fs_replica"] = TOKEN
    env.svc.serve(P1, ["recv", R1, "s1", "resume"], stream)
    # The rest of a full stream (the replica has no snapshot yet) replaces it as its start did.
    assert [c for c in env.ds.calls if c[0] in ("abort", "receive")] == [
        ("receive", "p/fs_replica@s1", True, stream.fileno(), "resumable")]
    env.ds.calls.clear()
    env.ds.tokens["p/fs_replica"] = TOKEN
    env.svc.serve(P1, ["recv", R1, "s2", "resume"], stream)  # the rest of an incremental one
    assert [c for c in env.ds.calls if c[0] == "receive"] == [
        ("receive", "p/fs_replica@s2", False, stream.fileno(), "resumable")]


# -- a replica that diverged: rolled back only when the primary's session asks -----------------

def test_serve_receive_rolls_back_to_the_named_snapshot_first_when_asked(env, replica, stream):
    env.snapshot(env.replica_vol, "s1", guid="111", creation=10)
    env.snapshot(env.replica_vol, "made-there", guid="777", creation=20)
    answer = env.svc.serve(P1, ["recv", R1, "s2", "incremental", "rollback-to", "s1"], stream)
    assert env.ds.calls[0] == ("rollback", "p/fs_replica@s1")
    assert [c[0] for c in env.ds.calls[1:]] == ["unmount", "receive", "mount"]
    names = {s.row.name for s in env.catalog.snapshots.values() if s.volume.row.id == env.replica_vol}
    assert names == {"s1", "s2"} and answer == {"snap_id": str(max(env.catalog.snapshots))}


def test_serve_receive_refuses_a_rollback_to_a_snapshot_the_replica_lacks(env, replica, stream):
    env.snapshot(env.replica_vol, "s1", guid="111")
    with pytest.raises(ConflictError, match="no snapshot s0 to roll back to"):
        env.svc.serve(P1, ["recv", R1, "s2", "incremental", "rollback-to", "s0"], stream)
    assert env.ds.calls == []


@pytest.mark.parametrize("words", [["recv", R1, "s2", "full", "rollback-to", "s1"],
                                   ["recv", R1, "s2", "incremental", "rollback", "s1"],
                                   ["recv", R1, "s2", "incremental", "rollback-to"],
                                   ["recv", R1, "s2", "incremental", "from", "111", "from", "111"],
                                   ["recv", R1, "s2", "resume", "from", "111"]])
def test_serve_receive_rollback_words_are_exact(env, replica, stream, words):
    env.snapshot(env.replica_vol, "s1", guid="111")
    with pytest.raises(ValidationError, match="Unknown replication request"):
        env.svc.serve(P1, words, stream)
    assert env.ds.calls == []


@pytest.mark.parametrize("name", ["-F", "a@b", "$(id)"])
def test_serve_receive_bad_rollback_snapshot_name(env, replica, stream, name):
    env.snapshot(env.replica_vol, "s1", guid="111")
    with pytest.raises(ValidationError):
        env.svc.serve(P1, ["recv", R1, "s2", "incremental", "rollback-to", name], stream)
    assert env.ds.calls == []


def test_a_received_snapshot_is_the_replicas_last_common_one(env, replica, stream):
    env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    rel = env.svc.get_relationship(R1)
    (snap,) = [s for s in env.catalog.snapshots.values() if s.volume.row.id == env.replica_vol]
    assert rel["last_common_snapshot"] == {"name": "s1", "guid": snap.props["guid"]}


def test_an_incremental_follows_only_the_replicas_newest_snapshot_its_base(env, replica, stream):
    env.snapshot(env.replica_vol, "s1", guid="111", creation=10)
    env.snapshot(env.replica_vol, "made-there", guid="777", creation=20)
    with pytest.raises(ConflictError, match="newer than the stream's base s1: made-there"):
        env.svc.serve(P1, ["recv", R1, "s2", "incremental", "from", "111"], stream)
    with pytest.raises(ConflictError, match="does not hold the stream's base"):
        env.svc.serve(P1, ["recv", R1, "s2", "incremental", "from", "555"], stream)
    with pytest.raises(ValidationError, match="not a snapshot guid"):
        env.svc.serve(P1, ["recv", R1, "s2", "incremental", "from", "-F"], stream)
    assert env.ds.calls == []
    env.svc.serve(P1, ["recv", R1, "s2", "incremental", "from", "777"], stream)
    assert [c[0] for c in env.ds.calls] == ["unmount", "receive", "mount"]


# -- a raw (encrypted) full stream: received as a new dataset in place of the placeholder -------

def test_serve_raw_full_receive_replaces_the_placeholder(env, replica, stream):
    answer = env.svc.serve(P1, ["recv", R1, "s1", "full-raw"], stream)
    (snap,) = [s for s in env.catalog.snapshots.values() if s.volume.row.id == env.replica_vol]
    assert answer == {"snap_id": str(snap.row.id)}
    assert env.replacements == [("begin", env.replica_vol, "p/fs_replica"), ("end", env.replica_vol, "p/fs_replica")]
    # no -F, no -s (a broken stream leaves nothing to resume); the stamps set as it is made
    assert env.ds.calls == [("receive_new", "p/fs_replica@s1", stream.fileno(),
                             {"com.vsnap:vol_id": str(env.replica_vol), "readonly": "on", "atime": "off"})]


def test_serve_plain_full_stream_into_an_encrypted_placeholder_replaces_it_too(env, replica, stream):
    # The partner's pool is encrypted: its placeholder is, and ZFS refuses -F over it.
    env.ds.encrypted_datasets.add("p/fs_replica")
    env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert [c[0] for c in env.ds.calls] == ["receive_new"]
    assert [r[0] for r in env.replacements] == ["begin", "end"]


def test_serve_raw_full_receive_that_fails_puts_the_placeholder_back(env, replica, stream):
    env.ds.receive_error = CommandError(["zfs", "receive"], 1, "", "cannot receive: invalid stream")
    with pytest.raises(ConflictError, match="invalid stream"):
        env.svc.serve(P1, ["recv", R1, "s1", "full-raw"], stream)
    assert [r[0] for r in env.replacements] == ["begin", "end"]  # end: the placeholder made again


def test_serve_raw_full_receive_whose_placeholder_cannot_go(env, replica, stream):
    env.begin_error = CommandError(["zfs", "destroy"], 1, "", "cannot destroy: dataset is busy")
    with pytest.raises(ConflictError, match="could not make way.*busy"):
        env.svc.serve(P1, ["recv", R1, "s1", "full-raw"], stream)
    assert env.ds.calls == [] and [r[0] for r in env.replacements] == ["begin"]


def test_serve_raw_full_stream_onto_a_replica_with_snapshots(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    with pytest.raises(ConflictError, match="only an incremental"):
        env.svc.serve(P1, ["recv", R1, "s2", "full-raw"], stream)
    assert env.ds.calls == [] and env.replacements == []


def test_a_replica_left_receiving_by_a_dead_receive_is_settled_before_it_is_read(env, replica, stream):
    with env.store.session() as s:
        v = s.get(Volume, env.replica_vol)
        v.state, v.owner = "receiving", "999999999:1"
    env.svc.serve(P1, ["snapshots", R1], stream)
    assert env.replacements == [("settle", env.replica_vol)]
