"""A short run of the fault campaign (`make soak` runs the long one; docs/RELIABILITY.md)."""

from __future__ import annotations

import os

from soak.report import run_campaign
from soak.storm import run_storm

SHORT_SOAK_SECONDS = float(os.environ.get("OVERSIPD_SOAK_SECONDS", "20"))
# A fixed seed keeps `make test` reproducible; OVERSIPD_SOAK_SEED explores others.
SHORT_SOAK_SEED = int(os.environ.get("OVERSIPD_SOAK_SEED", "7"))
# The fork storm of issue 14 (tests/soak/storm.py): a few seconds here, `make soak` runs more.
SHORT_STORM_CYCLES = int(os.environ.get("OVERSIPD_STORM_CYCLES", "25"))


def test_short_soak_violates_no_invariant():
    lines: list[str] = []
    # Without the SIP load: the call stream's end alone waits up to 32 s
    # (Timer J) for the transactions to drain; `make soak` runs it.
    result = run_campaign(SHORT_SOAK_SEED, SHORT_SOAK_SECONDS, say=lines.append, sip_load=False)
    print("\n".join(lines))
    assert result.ok, "\n".join(lines)
    assert sum(result.soak.faults.values()) > 0


def test_short_fork_storm_kills_no_worker():
    lines: list[str] = []
    result = run_storm(SHORT_STORM_CYCLES, SHORT_SOAK_SEED, say=lines.append)
    print("\n".join(lines))
    assert result.ok, "\n".join(lines)
    assert result.cycles == SHORT_STORM_CYCLES
