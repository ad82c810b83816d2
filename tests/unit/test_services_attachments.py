"""The registry of what holds volumes and pools (attachments.py): every holder asked in the
order registered, undo on failure newest first, and defaults that hold and refuse nothing."""
from __future__ import annotations

import pytest

from vsnap.services.attachments import Attachment, Attachments

from support import holder


def test_the_default_attachment_holds_and_refuses_nothing():
    nothing = Attachment()
    assert nothing.refuse_volume_delete(1) is None and nothing.refuse_pool_delete(1, "p") is None
    assert nothing.refuse_volume_rename(1) is None
    assert nothing.volume_going(1) is None and nothing.pool_going(1, "p") is None
    assert nothing.volume_renaming(1) is None and nothing.pool_renaming("p") is None
    body: dict = {}
    nothing.describe_volume(object(), body)
    assert body == {}


def test_letting_go_returns_one_undo_of_all_newest_first():
    seen = []
    holders = Attachments(holder(volume_going=lambda x: lambda: seen.append(("undo a", x))),
                          holder(volume_going=lambda x: None),
                          holder(volume_going=lambda x: lambda: seen.append(("undo c", x))))
    undo = holders.volume_going(7)
    assert seen == []
    undo()
    assert seen == [("undo c", 7), ("undo a", 7)]


def test_a_failing_holder_undoes_the_ones_before_after_before_undo():
    seen = []

    def fails(pool_id, name):
        raise RuntimeError("refused")

    holders = Attachments(holder(pool_going=lambda i, n: lambda: seen.append("undo a")),
                          holder(pool_going=lambda i, n: lambda: seen.append("undo b")),
                          holder(pool_going=fails),
                          holder(pool_going=lambda i, n: seen.append("never called")))
    with pytest.raises(RuntimeError, match="refused"):
        holders.pool_going(1, "p", before_undo=lambda: seen.append("marked as before"))
    assert seen == ["marked as before", "undo b", "undo a"]


def test_a_failing_undo_does_not_stop_the_others():
    seen = []

    def bad_undo():
        raise OSError("gone")

    def fails(x):
        raise ValueError("no")

    holders = Attachments(holder(volume_renaming=lambda x: lambda: seen.append("undo a")),
                          holder(volume_renaming=lambda x: bad_undo), holder(volume_renaming=fails))
    with pytest.raises(ValueError):
        holders.volume_renaming(1)
    assert seen == ["undo a"]


def test_guards_and_reactions_reach_every_holder_in_order():
    seen = []

    def record(name):
        return lambda *args: seen.append((name, *args))
    first = holder(refuse_volume_delete=record("a"), volume_renamed=record("a"), pool_released=record("a"),
                   describe_volume=lambda row, body: body.update(share_id="1"))
    second = holder(refuse_volume_delete=record("b"), volume_renamed=record("b"), pool_released=record("b"),
                    describe_volume=lambda row, body: body.update(host_ids=["2"]))
    holders = Attachments(first)
    holders.register(second)
    holders.refuse_volume_delete(3)
    holders.volume_renamed(3, "p/v", "p/w")
    holders.pool_released("p")
    body: dict = {}
    holders.describe_volume(object(), body)
    assert seen == [("a", 3), ("b", 3), ("a", 3, "p/v", "p/w"), ("b", 3, "p/v", "p/w"), ("a", "p"), ("b", "p")]
    assert body == {"share_id": "1", "host_ids": ["2"]}


def test_a_refusal_stops_the_holders_after_it():
    def refuse(pool_id, name):
        raise PermissionError(name)
    later = []
    holders = Attachments(holder(refuse_pool_delete=refuse),
                          holder(refuse_pool_delete=lambda i, n: later.append(n)))
    with pytest.raises(PermissionError):
        holders.refuse_pool_delete(1, "p")
    assert later == []


def test_holder_refuses_a_reaction_the_protocol_does_not_have():
    with pytest.raises(AssertionError):
        holder(volume_gone=lambda x: None)
