"""Hooks one service runs on another's behalf: undo on failure, newest first."""
from __future__ import annotations

import pytest

from vsnap.services.hooks import Hooks


def test_run_returns_one_undo_of_all_newest_first():
    seen = []
    hooks = Hooks([lambda x: lambda: seen.append(("undo a", x)), lambda x: None,
                   lambda x: lambda: seen.append(("undo c", x))])
    undo = hooks.run(7)
    assert seen == []
    undo()
    assert seen == [("undo c", 7), ("undo a", 7)]


def test_a_failing_hook_undoes_the_ones_before_after_before_undo():
    seen = []

    def fails(x):
        raise RuntimeError("refused")

    hooks = Hooks([lambda x: lambda: seen.append("undo a"), lambda x: lambda: seen.append("undo b"), fails,
                   lambda x: seen.append("never called")])
    with pytest.raises(RuntimeError, match="refused"):
        hooks.run(1, before_undo=lambda: seen.append("marked as before"))
    assert seen == ["marked as before", "undo b", "undo a"]


def test_a_failing_undo_does_not_stop_the_others():
    seen = []

    def bad_undo():
        raise OSError("gone")

    def fails(x):
        raise ValueError("no")

    hooks = Hooks([lambda x: lambda: seen.append("undo a"), lambda x: bad_undo, fails])
    with pytest.raises(ValueError):
        hooks.run(1)
    assert seen == ["undo a"]
