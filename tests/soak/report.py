"""Running a campaign in a fresh directory and printing what it injected and checked."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .faults import choose
from .runner import Soak, Violation


@dataclass
class Result:
    ok: bool
    soak: Soak
    elapsed: float
    violation: str = ""


def run_campaign(seed: int, seconds: float, say: Callable[[str], None] = print, trace: bool = False,
                 sip_load: bool = True) -> Result:
    """A whole soak: returns the result after printing the counts (and the violation, if any).

    `sip_load`: the call stream and the store outages, and at the end the
    wait for every transaction to drain (up to 32 s of Timer J after the
    last call); `make test`'s short run leaves them out.
    """
    directory = Path(tempfile.mkdtemp(prefix="oversipd-soak-"))
    directory.chmod(0o755)
    soak = Soak(seed, seconds, directory, say, trace, sip_load)
    began = time.monotonic()
    say(f"soak: seed {seed}, {seconds:g} s of faults, in {directory}")
    try:
        soak.run(choose)
    except Violation as violation:
        result = Result(False, soak, time.monotonic() - began, str(violation))
    else:
        result = Result(True, soak, time.monotonic() - began)
    finally:
        soak.cleanup()
    print_summary(result, say)
    if result.ok:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        say(f"the daemon's files and log are kept in {directory}")
    return result


def print_summary(result: Result, say: Callable[[str], None]) -> None:
    soak = result.soak
    say(f"{soak.step} step(s) in {result.elapsed:.1f} s, {soak.lifetimes} master lifetime(s), "
        f"{sum(soak.faults.values())} fault(s) injected, {sum(soak.checks.values())} invariant check(s)")
    say("faults injected:")
    for name, count in sorted(soak.faults.items()):
        say(f"  {count:6d}  {name}")
    if soak.exception_kinds:
        say("  exceptions raised: " + ", ".join(f"{kind} {count}" for kind, count
                                               in sorted(soak.exception_kinds.items())))
    say("invariants checked:")
    for name, count in sorted(soak.checks.items()):
        say(f"  {count:6d}  {name}")
    say(f"SIP: the kept TCP connection survived {soak.sip.survived_kills} SIGKILL/SIGTERM(s) of its worker "
        f"and was reopened {soak.sip.reopened} time(s) after its slot went away; "
        f"{soak.sip.shed} OPTIONS over UDP shed with 503 and asked again")
    if soak.verdict is not None:
        say(f"calls: {soak.verdict.summary()}")
    if soak.drained_in is not None:
        say(f"transactions: none left {soak.drained_in:.1f} s after the calls stopped")
    if soak.store is not None and soak.store.recoveries:
        say(f"store: {len(soak.store.recoveries)} outage(s), {soak.store.refusals} REGISTER(s) refused 503 meanwhile; "
            f"served again at most {max(soak.store.recoveries):.2f} s after the server was back")
    if soak.rss_growth:
        say(f"master RSS growth after warm-up: at most {max(soak.rss_growth) >> 10} KiB; "
            f"master fds at most {soak.max_fds}")
    if result.ok:
        say("OK: no invariant violated")
    else:
        say(f"VIOLATION at step {soak.step} ({soak.fault_name}), seed {soak.seed}: {result.violation}")
        say(f"replay: make soak SOAK_SEED={soak.seed} SOAK_SECONDS={soak.seconds:g}")
