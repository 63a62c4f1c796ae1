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


def test_the_soak_excuses_a_failed_call_only_by_a_worker_or_master_that_ended_during_it():
    """The rule of docs/RELIABILITY.md §1 for the call stream (make soak runs it against real SIPp calls)."""
    from soak.calls import CALL_TIMEOUT, Call, Window, judge

    def call(call_id: str, **times: float) -> Call:
        return Call("udp", call_id, times=dict(times))

    reload_step = Window(1, "sighup", 100.0, 101.0, "")
    kill_step = Window(2, "sigkill_worker", 200.0, 201.0, "worker")
    calls = [call("ok", start=100.0, answered=100.1, bye_ok=102.0),
             call("lost in a reload", start=99.0, answered=99.1),                 # no BYE 200, a reload meanwhile
             call("refused", start=100.5, refused=100.6),                         # 503 + Retry-After: allowed
             call("lost to the kill", start=199.0, answered=199.2),
             call("long before the kill", start=150.0, unanswered=150.0 + 2)]     # over before the kill began
    verdict = judge(calls, [reload_step, kill_step])
    assert [c.call_id for c, _ in verdict.unexcused] == ["lost in a reload", "long before the kill"]
    assert verdict.excused == {"worker ended (udp bye_lost)": 1}
    assert verdict.counts[("udp", "refused")] == 1
    assert call("x", start=1.0, answered=2.0).span == (1.0, 2.0 + CALL_TIMEOUT)
