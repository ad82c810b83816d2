"""The command a partner's SSH key is forced onto (see drivers/ssh.py): answers one
replication request, named in SSH_ORIGINAL_COMMAND, for that partner only, with JSON on
stdout. A snapshot stream arrives on stdin and goes to `zfs receive` untouched.

    python -m vsnap.worker.serve --state /var/lib/vsnap --partner <partner id>
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsnap.worker.serve")
    parser.add_argument("--state", required=True)
    parser.add_argument("--partner", required=True)
    args = parser.parse_args(argv)
    os.environ["VSNAP_STATE"] = args.state
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..config import Settings
    from ..errors import ApiError
    from ..services import Services, system_error

    words = os.environ.get("SSH_ORIGINAL_COMMAND", "").split()
    try:
        services = Services.build(Settings.from_env())
        result = services.replication.serve(args.partner, words, sys.stdin.buffer)
    except ApiError as exc:
        print(json.dumps({"error": exc.message, "type": exc.type}))
        return 1
    except Exception as exc:
        mapped = system_error(exc)
        if mapped is None:
            logging.getLogger("vsnap.worker.serve").exception("request %r failed", words[:1])
        print(json.dumps({"error": mapped.message if mapped else f"internal error: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
