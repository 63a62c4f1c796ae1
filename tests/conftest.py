"""Shared module sources for the tests: drop-in modules that report what they see."""

import textwrap

import pytest

from dns_server import dns_server, silent_nameserver  # noqa: F401  (fixtures for the SIP tests)

# A drop-in module that records every callback it gets, with where it ran.
PROBE = textwrap.dedent('''
    import asyncio
    import oversipd
    from oversipd import SystemCallbacks
    from oversipd.testing import record

    record("imported")

    @SystemCallbacks.on_started
    def started():
        loop = asyncio.get_running_loop()
        record("started", loop=type(loop).__name__, settings=oversipd.module_settings("probe"))

    @SystemCallbacks.on_reload
    def reloaded():
        record("reload", settings=oversipd.module_settings("probe"))

    @SystemCallbacks.on_terminated
    def terminated(error):
        record("terminated", error=error)
''')


def module(source: str) -> str:
    """Module source written inline in a test, with the usual imports in front."""
    header = ("import asyncio, os, signal, sys, time\n"
              "import oversipd\n"
              "from oversipd import SystemCallbacks, SystemEvents, Launcher, Logger\n"
              "from oversipd.testing import record\n")
    return header + textwrap.dedent(source)


def workers_of(events, name):
    """{worker slot: [events]} of the events called `name`."""
    slots = {}
    for event in events:
        if event["event"] == name:
            slots.setdefault(event["worker"], []).append(event)
    return slots


def check_fails_cleanly(daemon, result, *fragments):
    """Exit 2, one line naming what is wrong, and no module imported (a config error at the CLI boundary)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not daemon.find("imported")


@pytest.fixture
def probe():
    return PROBE
