"""The faults: each one injects something and checks what the SPEC says must follow.

Every fault leaves the daemon running (or restarted); the runner then
checks the invariants that hold after any step.
"""

from __future__ import annotations

import signal
import time
from typing import Callable

from . import observe
from .runner import CONVERGE_TIMEOUT, GRACEFUL_TIMEOUT, MAX_WORKERS, MIN_WORKERS, WORKER_TIMEOUT, Soak
from .store import store_outage

EXCEPTION_KINDS = ("RuntimeError", "ValueError", "OSError", "ZeroDivisionError", "Exception",
                   "SystemExit", "KeyboardInterrupt")
IGNORED = (signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE)
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Master log lines that must not follow "stopping (...)": no respawn, no count change, no user reload.
ACTIONS_AFTER_STOP = ("respawning", "SIGTTIN:", "SIGTTOU:", "SIGUSR1: running")
# Broken configurations: each must be refused on reload, the old one kept.
BROKEN_CONFIGS = {
    "invalid TOML": b"[core\nworkers = ",
    "unknown [core] key": b"[core]\nworkers = 2\nsoak_no_such_key = 1\n",
    "wrong type": b'[core]\nworkers = "many"\n',
    "out of range": b"[core]\nworkers = 2\nworker_timeout = -1.0\n",
    "unknown table": b"[core]\nworkers = 2\n[soak_no_such_table]\nx = 1\n",
    "missing modules_dir": b'[core]\nworkers = 2\nmodules_dir = "no/such/dir"\n',
    "not UTF-8": b"[core]\nworkers = 2 # \xff\xfe\n",
}


# --- helpers ---------------------------------------------------------------------

def random_worker(soak: Soak) -> tuple[int, int]:
    """(slot, pid) of a live worker, chosen by the seed.

    Right after a respawn a worker may not have its title yet (it sets it
    milliseconds after the fork): wait for one rather than choose among none.
    """
    slots = soak.wait_for(lambda: soak.workers().slots, "a live worker with its process title")
    slot = soak.rng.choice(sorted(slots))
    return slot, slots[slot]


def expect_every_worker(soak: Soak, event: str, start: int, pids: set[int]) -> None:
    """Each worker in `pids` that is still alive recorded `event` after `start`."""
    def missing() -> set[int]:
        alive = {pid for pid in pids if observe.is_running(pid)}
        return alive - {e["pid"] for e in soak.events(event, start=start)}
    soak.wait_for(lambda: not missing(), f"event {event!r} from every worker (missing {missing()})")


def expect_same_workers(soak: Soak, before: dict[int, int], why: str) -> None:
    after = soak.converge().slots
    if after != before:
        raise soak.violation(f"{why} changed the workers: {before} -> {after}")


def arm(soak: Soak, hook: str) -> str:
    kind = soak.rng.choice(EXCEPTION_KINDS)
    (soak.flags / hook).write_text(kind)
    soak.exception_kinds[kind] += 1
    return kind


def disarm(soak: Soak, hook: str) -> None:
    (soak.flags / hook).unlink(missing_ok=True)


# --- the faults --------------------------------------------------------------------

def sighup(soak: Soak) -> None:
    soak.injected("SIGHUP to the master")
    events, lines = soak.mark()
    pids = soak.workers().pids
    soak.signal_master(signal.SIGHUP)
    soak.wait_log("reload done", lines, "the reload to finish")
    expect_every_worker(soak, "reloaded", events, pids)
    expect_every_worker(soak, "reload_after_failure", events, pids)
    soak.checked("SIGHUP: every worker runs on_reload")


def sigusr1(soak: Soak) -> None:
    soak.injected("SIGUSR1 to the master")
    events, _ = soak.mark()
    pids = soak.workers().pids
    soak.signal_master(signal.SIGUSR1)
    expect_every_worker(soak, "user_reload", events, pids)
    soak.checked("SIGUSR1: every worker runs on_user_reload")


def sigttin(soak: Soak) -> None:
    if soak.target >= MAX_WORKERS:
        return sigttou(soak)
    soak.injected("SIGTTIN to the master")
    soak.target += 1
    soak.signal_master(signal.SIGTTIN)


def sigttou(soak: Soak) -> None:
    if soak.target <= MIN_WORKERS:
        return sigttin(soak)
    soak.injected("SIGTTOU to the master")
    events, _ = soak.mark()
    slots = soak.workers().slots
    leaving = slots[max(slots)]
    soak.target -= 1
    soak.signal_master(signal.SIGTTOU)
    soak.wait_for(lambda: soak.events("terminated", start=events, pid=leaving),
                  f"on_terminated in the worker removed by SIGTTOU (pid {leaving})")
    soak.checked("SIGTTOU: the removed worker runs on_terminated(False)")


def sigkill_worker(soak: Soak) -> None:
    soak.injected("SIGKILL to a worker")
    _, lines = soak.mark()
    slot, pid = random_worker(soak)
    if soak.signal_worker(pid, signal.SIGKILL):
        soak.sip.worker_replaced(pid)
        soak.wait_log(f"(pid {pid}) killed by SIGKILL", lines, f"the master to log the death of pid {pid}")
        soak.checked("a killed worker is logged and respawned in its slot")


def sigterm_worker(soak: Soak) -> None:
    soak.injected("SIGTERM to a worker")
    events, _ = soak.mark()
    _, pid = random_worker(soak)
    soak.signal_worker(pid, signal.SIGTERM)
    soak.sip.worker_replaced(pid)
    soak.wait_for(lambda: soak.events("terminated", start=events, pid=pid),
                  f"on_terminated in the worker sent SIGTERM (pid {pid})")


def sigstop_short(soak: Soak) -> None:
    """SIGSTOP then SIGCONT well within worker_timeout: the worker may carry on."""
    soak.injected("SIGSTOP/SIGCONT of a worker (short)")
    _, pid = random_worker(soak)
    stop_for(soak, pid, soak.rng.uniform(0.05, WORKER_TIMEOUT / 3))


def sigstop_long(soak: Soak) -> None:
    """SIGSTOP for longer than worker_timeout: the master must abort and replace the worker."""
    soak.injected("SIGSTOP/SIGCONT of a worker (beyond worker_timeout)")
    _, lines = soak.mark()
    slot, pid = random_worker(soak)
    stop_for(soak, pid, WORKER_TIMEOUT + soak.rng.uniform(0.5, 2.0))
    soak.wait_log(f"worker {slot} (pid {pid}): reactor unresponsive", lines,
                  f"worker_timeout to trip for the stopped worker pid {pid}")
    soak.wait_for(lambda: not observe.is_running(pid), f"the stopped worker pid {pid} to be killed")
    soak.checked("worker_timeout: a stopped worker is killed and replaced")


def stop_for(soak: Soak, pid: int, seconds: float) -> None:
    if soak.signal_worker(pid, signal.SIGSTOP):
        # Not a wait for something: the length of the stop is the fault.
        time.sleep(seconds)
        soak.signal_worker(pid, signal.SIGCONT)


def raise_in_callback(soak: Soak) -> None:
    """A module callback or server-script event raises; logged CRIT, the rest still run."""
    hook = soak.rng.choice(("on_reload", "on_user_reload", "on_terminated"))
    arm(soak, hook)
    soak.injected(f"exception raised in {hook}")
    try:
        if hook == "on_reload":
            sighup(soak)
        elif hook == "on_user_reload":
            sigusr1(soak)
        else:
            sigterm_worker(soak)  # the probe's on_terminated, which runs after, still records
    finally:
        disarm(soak, hook)
    soak.checked(f"an exception in {hook} is logged and the other callbacks still run")


def broken_then_fixed_config(soak: Soak) -> None:
    """A reload of a broken file keeps the old configuration; the fixed file is then applied."""
    name = soak.rng.choice(sorted(BROKEN_CONFIGS))
    soak.injected(f"reload of a broken configuration ({name})")
    _, lines = soak.mark()
    before = soak.workers().slots
    soak.write_conf(BROKEN_CONFIGS[name])
    soak.signal_master(signal.SIGHUP)
    soak.wait_log("reload refused", lines, f"the broken configuration ({name}) to be refused")
    expect_same_workers(soak, before, "a refused reload")
    soak.checked("a broken configuration is refused and the old one kept")
    # The fixed file, sometimes with another `workers`: the count follows the file then.
    new_workers = soak.rng.choice((soak.file_workers, soak.rng.randint(MIN_WORKERS, MAX_WORKERS)))
    if new_workers != soak.file_workers:
        soak.target = new_workers
    soak.file_workers = new_workers
    soak.daemon.core = soak.core_settings()
    soak.write_conf()
    sighup(soak)


def ignored_signal(soak: Soak) -> None:
    signum = soak.rng.choice(IGNORED)
    soak.injected(f"{signum.name} to the master")
    _, lines = soak.mark()
    before = soak.workers().slots
    now = time.monotonic()
    # SIGPIPE is logged at most once a second (a broken stderr raises it).
    quiet = signum == signal.SIGPIPE and now - soak.last_sigpipe < 1.0
    soak.signal_master(signum)
    if signum == signal.SIGPIPE:
        soak.last_sigpipe = now
    if not quiet:
        soak.wait_log(f"ignoring {signum.name}", lines, f"the master to log that it ignores {signum.name}")
    expect_same_workers(soak, before, signum.name)
    soak.checked("WINCH, ALRM, PIPE are logged and ignored")


def restart(soak: Soak) -> None:
    """A full stop (TERM, INT or QUIT) and a new start."""
    signum = soak.rng.choice(STOPS)
    soak.injected(f"stop/start cycle ({signum.name})")
    soak.check_step()
    soak.signal_master(signum)
    soak.end_lifetime(expected_status=0)
    soak.start_daemon()


def sigkill_master(soak: Soak) -> None:
    """The master dies uncatchably: every worker runs on_terminated(True) and leaves."""
    soak.injected("SIGKILL to the master")
    soak.check_step()
    soak.lifetime.error_pids |= soak.workers().pids
    soak.lifetime.master_killed = True
    soak.signal_master(signal.SIGKILL)
    soak.end_lifetime(expected_status=-signal.SIGKILL)
    soak.checked("workers of a killed master run on_terminated(True) and leave")
    soak.start_daemon()


def fatal_in_respawned_worker(soak: Soak) -> None:
    """A respawned worker's on_started raises: Launcher.fatal, the daemon exits 1."""
    arm(soak, "on_started")
    soak.injected("exception raised in on_started of a respawned worker")
    _, lines = soak.mark()
    life = soak.lifetime
    _, pid = random_worker(soak)
    life.fatal_injected = True
    life.error_pids |= soak.workers().pids - {pid}
    try:
        soak.signal_worker(pid, signal.SIGKILL)
        soak.end_lifetime(expected_status=1)
    finally:
        disarm(soak, "on_started")
    soak.wait_log("exiting with error status", lines, "Launcher.fatal's last line")
    soak.checked("an exception in on_started is fatal: the daemon exits 1")
    soak.start_daemon()


def hang_in_on_terminated(soak: Soak) -> None:
    """on_terminated blocks the reactor: graceful_timeout must end the worker with SIGKILL."""
    flag = soak.flags / "hang_on_terminated"
    flag.write_text(str(GRACEFUL_TIMEOUT * 30))
    try:
        if soak.target > MIN_WORKERS and soak.rng.random() < 0.5:
            soak.injected("on_terminated hangs in a worker removed by SIGTTOU")
            _, lines = soak.mark()
            slots = soak.workers().slots
            leaving = slots[max(slots)]
            soak.target -= 1
            soak.signal_master(signal.SIGTTOU)
            soak.wait_log(f"(pid {leaving}) killed by SIGKILL", lines,
                          f"graceful_timeout to end the hung retired worker pid {leaving}")
        else:
            soak.injected("on_terminated hangs during a stop")
            soak.check_step()
            soak.signal_master(signal.SIGTERM)
            soak.end_lifetime(expected_status=0)
            soak.start_daemon()
    finally:
        flag.unlink(missing_ok=True)
    soak.checked("graceful_timeout ends a worker whose on_terminated hangs")


def signals_during_slow_callbacks(soak: Soak) -> None:
    """HUPs (each with a new file), USR1, TTIN/TTOU and kills while on_reload or on_started awaits.

    A HUP during a reload coalesces into one more reload: none is lost, so
    every worker that was there for the last HUP ends on the last file.
    """
    soak.injected("signals during a slow on_reload / on_started")
    delays = [soak.flags / "delay_on_reload", soak.flags / "delay_on_started"]
    for flag in delays:
        flag.write_text(f"{soak.rng.uniform(0.1, 1.5):.2f}")
    try:
        for _ in range(soak.rng.randint(2, 4)):
            soak.write_conf()
            soak.signal_master(signal.SIGHUP)
            soak.injected("slow: SIGHUP with a new configuration")
            there_for_last_hup = soak.workers().pids
            other = soak.rng.choice(("USR1", "KILL", "TTIN", "TTOU", "none"))
            if other == "USR1":
                soak.signal_master(signal.SIGUSR1)
            elif other == "KILL":
                soak.signal_worker(random_worker(soak)[1], signal.SIGKILL)
            elif other in ("TTIN", "TTOU"):
                step = 1 if other == "TTIN" else -1
                if not MIN_WORKERS <= soak.target + step <= MAX_WORKERS:
                    continue
                _, lines = soak.mark()
                soak.target += step
                soak.signal_master(getattr(signal, "SIG" + other))
                soak.wait_log(f"SIG{other}: {soak.target} worker(s)", lines, f"the master to count SIG{other}")
            else:
                continue
            soak.injected(f"slow: {other}")
    finally:
        for flag in delays:
            flag.unlink(missing_ok=True)
    generation = soak.generation

    def stale() -> set[int]:
        alive = {pid for pid in there_for_last_hup if observe.is_running(pid)}
        return alive - {e["pid"] for e in soak.events("reloaded", generation=generation)}
    soak.wait_for(lambda: not stale(), f"every worker to reload generation {generation} (stale: {stale()})",
                  timeout=CONVERGE_TIMEOUT)
    soak.checked("no SIGHUP lost: every worker ends on the last configuration")


def signals_during_stop(soak: Soak) -> None:
    """While the workers' on_terminated awaits: HUP, USR1, TTIN, TTOU, more stop signals, a kill.

    The stop wins: exit status 0, no worker started after it began, every worker ends once.
    """
    soak.injected("signals during a stop")
    soak.check_step()
    flag = soak.flags / "delay_on_terminated"
    flag.write_text(f"{soak.rng.uniform(0.2, GRACEFUL_TIMEOUT / 2):.2f}")
    try:
        soak.signal_master(soak.rng.choice(STOPS))
        for _ in range(soak.rng.randint(1, 5)):
            choice = soak.rng.choice(("HUP", "USR1", "TTIN", "TTOU", "TERM", "INT", "QUIT", "KILL"))
            soak.injected(f"during stop: {choice}")
            if choice == "KILL":
                slots = soak.workers().slots
                if slots:
                    soak.signal_worker(slots[soak.rng.choice(sorted(slots))], signal.SIGKILL)
            elif soak.master_alive():
                soak.daemon.signal(getattr(signal, "SIG" + choice))
        soak.end_lifetime(expected_status=0)
    finally:
        flag.unlink(missing_ok=True)
    lines = soak.log_lines()
    stopping = next(i for i, line in enumerate(lines) if "stopping (" in line)
    late = [line for line in lines[stopping:] if any(text in line for text in ACTIONS_AFTER_STOP)]
    if late:
        raise soak.violation(f"the master still acted after the stop began: {late[0]}")
    soak.checked("a stop wins over signals that arrive during it")
    soak.start_daemon()


def signals_during_start(soak: Soak) -> None:
    """A restart whose workers are slow in on_started, with HUP and USR1 (and a bad file) before READY=1."""
    soak.injected("signals during start-up")
    soak.check_step()
    soak.signal_master(signal.SIGTERM)
    soak.end_lifetime(expected_status=0)
    flag = soak.flags / "delay_on_started"
    flag.write_text(f"{soak.rng.uniform(0.1, 1.0):.2f}")
    broken = soak.rng.random() < 0.3
    try:
        soak.start_daemon(wait=False)
        soak.wait_log(f"started {soak.target} worker(s)", soak.lifetime.log_from,
                      "the master to fork its workers")
        if broken:
            soak.write_conf(BROKEN_CONFIGS["invalid TOML"])
        for signum in soak.rng.sample((signal.SIGHUP, signal.SIGUSR1), soak.rng.randint(1, 2)):
            soak.injected(f"during start-up: {signum.name}{' (broken file)' if broken and signum == signal.SIGHUP else ''}")
            soak.signal_master(signum)
        soak.wait_ready()
    finally:
        flag.unlink(missing_ok=True)
        if broken:
            soak.write_conf()
    first_ready = next(line for line in soak.notifications(soak.lifetime.notifications_from)
                       if line.startswith("STATUS="))
    if "worker(s) running" not in first_ready:
        raise soak.violation(f"the first READY=1 of a start came with {first_ready!r}")
    soak.checked("READY=1 only once every worker ran on_started, whatever arrives before")


def burst(soak: Soak) -> None:
    """Several signals back to back, without waiting for the daemon to settle in between."""
    soak.injected("burst of signals")
    # Count-changing signals are sent one at a time, each after the master
    # logged the last: the kernel merges a pending signal with its twin.
    for _ in range(soak.rng.randint(2, 6)):
        choice = soak.rng.choice(("HUP", "USR1", "TTIN", "TTOU", "KILL"))
        soak.injected(f"burst: {choice}")
        if choice == "KILL":
            slots = soak.workers().slots
            if slots:
                soak.signal_worker(slots[soak.rng.choice(sorted(slots))], signal.SIGKILL)
        elif choice in ("TTIN", "TTOU"):
            step = 1 if choice == "TTIN" else -1
            if MIN_WORKERS <= soak.target + step <= MAX_WORKERS:
                _, lines = soak.mark()
                soak.target += step
                soak.signal_master(getattr(signal, "SIG" + choice))
                soak.wait_log(f"SIG{choice}: {soak.target} worker(s)", lines, f"the master to count SIG{choice}")
        else:
            soak.signal_master(getattr(signal, "SIG" + choice))


# Relative weights: cheap signals often, whole-daemon cycles now and then.
FAULTS: list[tuple[int, Callable[[Soak], None]]] = [
    (10, sighup), (8, sigusr1), (6, sigttin), (6, sigttou), (10, sigkill_worker),
    (4, sigterm_worker), (4, sigstop_short), (3, sigstop_long), (6, raise_in_callback),
    (4, broken_then_fixed_config), (3, ignored_signal), (4, burst), (4, signals_during_slow_callbacks),
    (2, restart), (1, sigkill_master), (1, fatal_in_respawned_worker), (1, hang_in_on_terminated),
    (2, signals_during_stop), (2, signals_during_start), (4, store_outage),
]


def choose(soak: Soak) -> Callable[[Soak], None]:
    weights, faults = zip(*FAULTS)
    return soak.rng.choices(faults, weights)[0]
