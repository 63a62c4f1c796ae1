"""Drop-in module sources shared by the service tests (SPEC §4, §6)."""

# Records each lifecycle callback as an event named after it.
LIFECYCLE_PROBE = '''
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("on_started")


@SystemCallbacks.on_reload
def reloaded():
    record("on_reload")


@SystemCallbacks.on_terminated
def terminated(error):
    record("on_terminated", error=error)
'''


def fatal_on_started(message: str) -> str:
    """A module whose on_started calls Launcher.fatal(message)."""
    return f'''
from oversipd import Launcher, SystemCallbacks


@SystemCallbacks.on_started
def started():
    Launcher.fatal({message!r})
'''
