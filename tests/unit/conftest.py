"""Shared fakes for the unit tests: no root, no network, no real storage commands."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from vsnap.drivers.runner import CommandError, Result
from vsnap.store.db import Store
from vsnap.store.models import Base


class FakeRunner:
    """Stands in for vsnap.drivers.runner.Runner.

    Responses are registered by argv prefix; the longest matching prefix wins. A response is
    either (returncode, stdout, stderr) or an exception instance to raise. Like the real Runner,
    a non-zero exit raises CommandError when check=True. An unexpected command fails the test.
    """

    def __init__(self):
        self.responses: dict[tuple[str, ...], object] = {}
        self.calls: list[dict] = []
        self.steps: list[str] = []  # what drivers announced through step_done

    def step_done(self, what: str) -> None:
        self.steps.append(what)

    def on(self, argv_prefix, stdout: str = "", returncode: int = 0, stderr: str = "",
           raises: Exception | None = None) -> "FakeRunner":
        self.responses[tuple(argv_prefix)] = raises if raises is not None else (returncode, stdout, stderr)
        return self

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls]

    def run(self, argv, *, check=True, input=None, timeout=None, env=None, changes=None):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        self.calls.append({"argv": list(argv), "check": check, "input": input, "timeout": timeout})
        matches = [p for p in self.responses if tuple(argv[:len(p)]) == p]
        if not matches:
            raise AssertionError(f"unexpected command: {argv}")
        response = self.responses[max(matches, key=len)]
        if isinstance(response, BaseException):
            raise response
        returncode, stdout, stderr = response
        if check and returncode != 0:
            raise CommandError(list(argv), returncode, stdout, stderr)
        return Result(list(argv), returncode, stdout, stderr)


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real Store per module (SQLAlchemy compiles each statement once per engine), on
    tmpfs when there is one: it commits with synchronous=FULL, and fsyncs on a disk are slow.
    Tests empty its tables with `support.empty_tables` as they start."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        where = Path(tempfile.mkdtemp(prefix="vsnap-unit-", dir=shm))
    else:
        where = tmp_path_factory.mktemp("db")
    store = Store(f"sqlite:///{where / 'vsnap.db'}")
    Base.metadata.create_all(store.engine)
    try:
        yield store
    finally:
        store.engine.dispose()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")
