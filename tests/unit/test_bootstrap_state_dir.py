"""The bootstrap closes the state directory and the directories of keys to everyone but root."""
from __future__ import annotations

import os
import stat

from vsnap.bootstrap import ensure_state_dir
from vsnap.config import Settings


def test_state_dir_and_key_directories_are_0700(tmp_path):
    state = tmp_path / "state"
    for sub in ("ssh", "tls", "log"):
        (state / sub).mkdir(parents=True)
        os.chmod(state / sub, 0o755)  # as the lab's mkdir -p leaves them
    ensure_state_dir(Settings.from_env({"VSNAP_STATE": str(state)}))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (state, state / "ssh", state / "tls", state / "log")}
    assert modes == {"state": 0o700, "ssh": 0o700, "tls": 0o700, "log": 0o755}
