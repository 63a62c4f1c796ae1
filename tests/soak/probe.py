"""The modules and server script the soak daemon runs: they record what happens, and fail on demand.

A fault is armed by a flag file named after the hook (`on_reload`,
`on_user_reload`, `on_terminated`, `on_started`) in the `[modules.soak]
flags` directory; the file holds the name of the exception to raise.
Every injected exception carries INJECTED_MARK, so the log checker can
tell an injected traceback from one of oversipd's own.
"""

from __future__ import annotations

INJECTED_MARK = "soak-injected"

# Imported first (sorted order): its on_terminated runs last, after the
# faulty module's, so "the rest still run" is visible in the events.
PROBE_MODULE = '''
import os

import oversipd
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("started", ppid=os.getppid())


@SystemCallbacks.on_reload
def reloaded():
    # The generation names the configuration file this reload applied.
    record("reloaded", generation=oversipd.module_settings("soak").get("generation"))


@SystemCallbacks.on_terminated
def terminated(error):
    record("terminated", error=error, ppid=os.getppid())
'''

# Arms a hook: `maybe_raise(hook)` raises the exception named in the hook's flag file.
ARMING = '''
import builtins
import os

import oversipd
from oversipd.testing import record

MARK = %(mark)r


def armed(hook):
    """The exception to raise in `hook`, when its flag file exists."""
    path = os.path.join(oversipd.module_settings("soak")["flags"], hook)
    try:
        with open(path) as flag:
            kind = flag.read().strip()
    except FileNotFoundError:
        return None
    return getattr(builtins, kind)(f"{MARK} failure in {hook}")


def maybe_hang(hook):
    """Block the reactor for the seconds named in the hook's hang flag file, when it exists."""
    path = os.path.join(oversipd.module_settings("soak")["flags"], "hang_" + hook)
    try:
        with open(path) as flag:
            seconds = float(flag.read())
    except FileNotFoundError:
        return
    record("hanging", hook=hook)
    __import__("time").sleep(seconds)


async def maybe_delay(hook):
    """Await (without blocking the reactor) the seconds named in the hook's delay flag file."""
    path = os.path.join(oversipd.module_settings("soak")["flags"], "delay_" + hook)
    try:
        with open(path) as flag:
            seconds = float(flag.read())
    except FileNotFoundError:
        return
    await __import__("asyncio").sleep(seconds)


def maybe_raise(hook):
    error = armed(hook)
    if error is not None:
        record("raising", hook=hook, kind=type(error).__name__)
        raise error
''' % {"mark": INJECTED_MARK}

FAULTY_MODULE = ARMING + '''
from oversipd import SystemCallbacks


@SystemCallbacks.on_started
async def started():
    await maybe_delay("on_started")
    maybe_raise("on_started")


@SystemCallbacks.on_reload
async def reload_may_fail():
    await maybe_delay("on_reload")
    maybe_raise("on_reload")


@SystemCallbacks.on_reload
def reload_after_failure():
    record("reload_after_failure")


@SystemCallbacks.on_terminated
async def terminated_may_fail(error):
    await maybe_delay("on_terminated")
    maybe_hang("on_terminated")
    maybe_raise("on_terminated")
'''

# The server script is imported before the drop-ins: it must not import
# them, or it would change their registration order.
SERVER_SCRIPT = ARMING + '''
from oversipd import SystemEvents


@SystemEvents.on_started
def ready():
    record("ready", ppid=os.getppid())


@SystemEvents.on_user_reload
def user_reload():
    record("user_reload")
    maybe_raise("on_user_reload")
'''

MODULES = {"aa_probe": PROBE_MODULE, "zz_faulty": FAULTY_MODULE}
