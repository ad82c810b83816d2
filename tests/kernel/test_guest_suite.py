"""The integration tests marked `guest` (and `kernel_stack`), run inside the guest on the
production stack: the same tests as on the lab's stack, not a second copy of them."""
from __future__ import annotations

import re

from .conftest import KLAB


def test_the_integration_tests_pass_on_the_production_stack(guest):
    run = guest.sh("cd /root/vsnap-src && make guest-suite 2>&1", check=False, timeout=3600)
    log = KLAB / "run" / "guest-suite.log"
    log.write_text(run.stdout + run.stderr)
    # pytest's last line, "===== 53 passed, 412 deselected in 900.00s =====" (the labs' going
    # down is printed after it)
    summaries = re.findall(r"^=+ (.*\d+ (?:passed|failed|skipped|errors?).* in [\d.]+s.*) =+$", run.stdout, re.M)
    summary = summaries[-1] if summaries else "(no pytest summary)"
    assert run.returncode == 0, f"the guest suite failed (whole output in {log}):\n{run.stdout[-12000:]}"
    # Every selected test ran: a skip inside the guest would be a production path unproven.
    counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (passed|skipped|failed|error)", summary))
    assert counts.get("passed", 0) > 0 and set(counts) == {"passed"}, summary
    print(summary)
