"""The command a partner's SSH key is forced onto (see drivers/ssh.py): answers one
replication request, named in SSH_ORIGINAL_COMMAND, for that partner only, with JSON on
stdout. A snapshot stream arrives on stdin and goes to `zfs receive` untouched.

    python -m vsnap.worker.serve --state /var/lib/vsnap --partner <partner id>

The appliance's running server answers the request (see partner_server.py: this process
starts in a few hundredths of a second, the service layer is already built there); when no
server listens, the request is answered here, with a service layer built for it.
"""
from __future__ import annotations

import argparse
import os
import sys

from .partner_server import forward, socket_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsnap.worker.serve")
    parser.add_argument("--state", required=True)
    parser.add_argument("--partner", required=True)
    args = parser.parse_args(argv)
    words = os.environ.get("SSH_ORIGINAL_COMMAND", "").split()
    forwarded = forward(socket_path(args.state), args.partner, words, sys.stdin.fileno())
    if forwarded is None:
        forwarded = answer_here(args.state, args.partner, words)
    status, text = forwarded
    print(text)
    return status


def answer_here(state: str, partner_id: str, words: list[str]) -> tuple[int, str]:
    import logging

    from ..config import Settings
    from ..services import Services
    from .partner_server import answer
    os.environ["VSNAP_STATE"] = state
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def serve(partner, request, stdin):
        return Services.build(Settings.from_env()).replication.serve(partner, request, stdin)
    return answer(serve, partner_id, words, sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
