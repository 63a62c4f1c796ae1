"""`oversipd new-module NAME`: write a module distribution `oversip-mod-NAME/` to start from."""

from __future__ import annotations

import keyword
from pathlib import Path
from string import Template

import oversipd

from .errors import ConfigError

COMMAND = "new-module"
DISTRIBUTION_PREFIX = "oversip-mod-"
NOT_AN_IDENTIFIER = "{name!r} is not a valid Python identifier (a module name looks like my_module)"
IS_A_KEYWORD = "{name!r} is a Python keyword, not usable as a module name"
ALREADY_EXISTS = "{path} already exists; refusing to overwrite it"
CREATED = "created {path}: `pip install -e '{path}[test]'`, then `pytest {path}`"


def check_name(name: str) -> None:
    """Refuse a NAME that can't be `oversipd.modules.NAME`."""
    if not name.isidentifier():
        raise ConfigError(COMMAND, None, NOT_AN_IDENTIFIER.format(name=name))
    if keyword.iskeyword(name):
        raise ConfigError(COMMAND, None, IS_A_KEYWORD.format(name=name))


def create_module_distribution(name: str, directory: str | Path = ".", with_resource: bool = False) -> Path:
    """Write `DIRECTORY/oversip-mod-NAME/` and return its path; a mistake is a ConfigError.

    `with_resource`: a module holding one connection per worker (an
    `oversipd.worker_resource`) instead of one driven by settings.
    """
    check_name(name)
    root = Path(directory) / f"{DISTRIBUTION_PREFIX}{name}"
    if root.exists():
        raise ConfigError(COMMAND, None, ALREADY_EXISTS.format(path=root))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir(mode=0o755)
    except FileExistsError:
        raise ConfigError(COMMAND, None, ALREADY_EXISTS.format(path=root)) from None
    values = {"name": name, "dist": f"{DISTRIBUTION_PREFIX}{name}",
              "oversipd_version": oversipd.__version__}
    for relative, template in (FILES_WITH_RESOURCE if with_resource else FILES).items():
        path = root / Template(relative).substitute(values)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
        path.chmod(0o644)
    return root


# --- the files -------------------------------------------------------------------
# string.Template: `$name` is the module's name, `$dist` the distribution's,
# `$$` a literal dollar sign.

SETUP_CFG = """\
[metadata]
name = $dist
version = 0.1.0
description = The $name module for oversipd
long_description = file: README.md
long_description_content_type = text/markdown

[options]
# Only oversipd/modules/$name.py: the oversipd and oversipd.modules packages
# belong to the oversipd distribution (no __init__.py of ours there).
packages = find_namespace:
python_requires = >=3.11
install_requires =
    oversipd >= $oversipd_version

[options.packages.find]
include = oversipd.modules

[options.extras_require]
test =
    pytest

[tool:pytest]
testpaths = tests
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"
"""

MODULE = '''\
"""The $name module for oversipd.

Settings, `[modules.$name]` in oversipd.conf:

    [modules.$name]
    greeting = "hello"    # a non-empty string
    interval = 5.0        # seconds between two ticks, > 0

Load it from the server script (`import oversipd.modules.$name`), or let
another module import it.  Its callbacks run in every worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import oversipd
from oversipd import Launcher, Logger, SystemCallbacks

DEFAULTS: dict[str, Any] = {"greeting": "hello", "interval": 5.0}

log = Logger("$name module")
# This worker's state; empty until on_started ran (on_terminated copes).
state: dict[str, Any] = {}


def read_settings() -> dict[str, Any]:
    """The [modules.$name] table with defaults; a ValueError names a wrong key."""
    table = {**DEFAULTS, **oversipd.module_settings("$name")}
    for key in table:
        if key not in DEFAULTS:
            raise ValueError(f"modules.$name.{key}: unknown key")
    greeting = table["greeting"]
    if not isinstance(greeting, str) or not greeting:
        raise ValueError(f"modules.$name.greeting: expected a non-empty string, got {greeting!r}")
    interval = table["interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ValueError(f"modules.$name.interval: expected a number > 0, got {interval!r}")
    return {"greeting": greeting, "interval": float(interval)}


async def tick() -> None:
    count = 0
    while True:
        await asyncio.sleep(state["settings"]["interval"])
        count += 1
        log.log_system_debug(f"tick {count}")


@SystemCallbacks.on_started
def start() -> None:
    """In each worker, once its reactor runs: check the settings, then start working."""
    try:
        settings = read_settings()
    except ValueError as error:
        Launcher.fatal(str(error))  # the daemon exits 1: a configuration mistake
    state["settings"] = settings
    state["task"] = asyncio.get_running_loop().create_task(tick())
    log.log_system_notice(f"{settings['greeting']} from worker {oversipd.process.worker_id}")


@SystemCallbacks.on_reload
def reload() -> None:
    """After SIGHUP: take the new settings when valid, keep the old ones otherwise."""
    try:
        state["settings"] = read_settings()
    except ValueError as error:
        log.log_system_error(f"{error}; keeping the previous settings")
        return
    log.log_system_info(f"settings reloaded: {state['settings']['greeting']}")


@SystemCallbacks.on_terminated
async def stop(error: bool) -> None:
    """As the worker ends: stop the work on_started began (if it got that far)."""
    task = state.pop("task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    log.log_system_info(f"stopped (error={error})")
'''

TEST = '''\
"""The $name module in a real oversipd (the oversipd.testing pytest plugin)."""

# The module is installed, not dropped in: the server script loads it.
SERVER_SCRIPT = "import oversipd.modules.$name\\n"


def test_every_worker_starts_with_the_configured_greeting(oversipd_daemon):
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, workers=2,
                             settings={"$name": {"greeting": "hi there"}})
    daemon.wait_log("hi there from worker", count=2)
    assert daemon.stop() == 0
    daemon.wait_log("stopped (error=False)", count=2)


def test_a_wrong_setting_is_fatal_and_named(oversipd_daemon):
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, start=False,
                             settings={"$name": {"interval": 0}})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    daemon.wait_log("modules.$name.interval: expected a number > 0, got 0")


def test_reload_takes_the_new_settings(oversipd_daemon):
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, settings={"$name": {"greeting": "hello"}})
    daemon.set_settings("$name", {"greeting": "bonjour"})
    daemon.reload()
    daemon.wait_log("settings reloaded: bonjour")
    daemon.set_settings("$name", {"greeting": ""})
    daemon.reload()
    daemon.wait_log("keeping the previous settings")
    assert daemon.running
'''

README = """\
# $dist

The `$name` module for oversipd: it
installs `oversipd/modules/$name.py` into the `oversipd.modules` namespace.

## Install and test

    pip install -e '.[test]'      # or: pip install .
    pytest                        # starts real daemons (oversipd.testing plugin)

## Use

Load it from the server script:

```python
import oversipd.modules.$name
```

and configure it in `oversipd.conf`:

```toml
[modules.$name]
greeting = "hello"
interval = 5.0
```

The settings are checked in each worker's `on_started` (a mistake stops the
daemon with exit status 1 and names the key) and again on reload (a mistake
is logged; the old settings stay). See oversipd's `docs/modules.md` for the
lifecycle and the testing plugin.
"""

FILES: dict[str, str] = {
    "setup.cfg": SETUP_CFG,
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "oversipd/modules/$name.py": MODULE,
    "tests/test_$name.py": TEST,
}


# --- `--with-resource`: a module that holds connections ---------------------------
# Raw strings: the generated code's own backslashes are kept as written.

RESOURCE_MODULE = r'''"""The $name module for oversipd: a connection per worker to a line-based TCP service.

The server script declares connections in the master; each worker opens
its own (an `oversipd.worker_resource`: opened before the on_started
callbacks, closed after the on_terminated ones, never across the fork):

    from oversipd import SystemEvents
    from oversipd.modules import $name

    @SystemEvents.on_initialize
    def configure():
        $name.add_connection("main", host="127.0.0.1", port=7000)

    # in a worker (a callback, a request handler):
    reply = await $name.connection("main").request("PING")
"""

from __future__ import annotations

import asyncio
import os

import oversipd
from oversipd import Launcher, Logger, ResourceError, WorkerResource, worker_resource

CONNECT_TIMEOUT = 5.0  # seconds a worker waits at start for the service

log = Logger("$name module")


class Connection(Logger):
    """One worker's connection: a line out, a line back, one request at a time."""

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.log_id = f"$name connection {name!r}"
        self.reader, self.writer = reader, writer
        self.turn = asyncio.Lock()  # requests on one connection must not interleave

    async def request(self, line: str) -> str:
        async with self.turn:
            self.writer.write(line.encode() + b"\n")
            await self.writer.drain()
            reply = await self.reader.readline()
        if not reply:
            raise ConnectionError("the service closed the connection")
        return reply.decode().rstrip("\n")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass  # already broken: closing was all that was left to do
        self.log_system_info("closed")


_connections: dict[str, WorkerResource[Connection]] = {}


# --- declaring (master, before the fork) --------------------------------------------

def add_connection(name: str, host: str = "127.0.0.1", port: int = 7000) -> None:
    """Declare connection `name` to `host:port`; call it from SystemEvents.on_initialize."""
    problem = _check(name, host, port)
    if problem is not None:
        Launcher.fatal(f"$name.add_connection({name!r}): {problem}")  # exit 1, nothing forked

    async def open_connection() -> Connection:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as error:
            # A ResourceError is fatal: logged with the resource's name and this reason.
            raise ResourceError(f"cannot connect to {host}:{port}: {_reason(error)}") from None
        log.log_system_info(f"worker {oversipd.process.worker_id} connected to {host}:{port}")
        return Connection(name, reader, writer)

    _connections[name] = worker_resource(f"$name connection {name!r}", open=open_connection,
                                         close=Connection.close)


def _reason(error: BaseException) -> str:
    """'Connection refused' rather than asyncio's 'Connect call failed (...)'."""
    number = getattr(error, "errno", None)
    return os.strerror(number) if number else str(error) or "timed out"


def _check(name: object, host: object, port: object) -> str | None:
    """What is wrong with add_connection's arguments (naming the argument), or None."""
    if not isinstance(name, str) or not name:
        return f"name: expected a non-empty string, got {name!r}"
    if name in _connections:
        return "name: a connection of this name was already added"
    if not isinstance(host, str) or not host:
        return f"host: expected a non-empty string, got {host!r}"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return f"port: expected an integer in 1..65535, got {port!r}"
    return None


# --- using (workers) ------------------------------------------------------------------

def connection(name: str) -> Connection:
    """This worker's open connection `name` (KeyError for a name never added)."""
    try:
        resource = _connections[name]
    except KeyError:
        raise KeyError(f"no $name connection named {name!r}; add it with $name.add_connection()") from None
    return resource.get()
'''

RESOURCE_TEST = r'''"""The $name module in a real oversipd (the oversipd.testing pytest plugin), against a real TCP service."""

import socket
import socketserver
import threading

import pytest

SERVER_SCRIPT = """
from oversipd import SystemCallbacks, SystemEvents, module_settings
from oversipd.modules import $name
from oversipd.testing import record

@SystemEvents.on_initialize
def configure():
    $name.add_connection("main", **module_settings("$name"))

@SystemCallbacks.on_started
async def ask():
    reply = await $name.connection("main").request("hello")
    record("reply", reply=reply)
"""


class Upper(socketserver.StreamRequestHandler):
    """The service: each line back in capitals."""

    def handle(self):
        self.server.clients.add(self.client_address)
        for line in self.rfile:
            self.wfile.write(line.upper())


@pytest.fixture
def service():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upper)
    server.daemon_threads = True
    server.clients = set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_every_worker_opens_its_own_connection(oversipd_daemon, service):
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, workers=2,
                             settings={"$name": {"port": service.server_address[1]}})
    replies = daemon.wait_events("reply", count=2)
    assert [r["reply"] for r in replies] == ["HELLO", "HELLO"]
    assert {r["worker"] for r in replies} == {1, 2}
    assert len(service.clients) == 2, "one connection per worker"
    assert daemon.stop() == 0
    daemon.wait_log("<$name connection 'main'> closed", count=2)


def test_a_bad_argument_is_fatal_and_named(oversipd_daemon):
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, start=False, settings={"$name": {"port": 0}})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    daemon.wait_log("port: expected an integer in 1..65535, got 0")


def test_an_unreachable_service_is_fatal_and_named(oversipd_daemon):
    port = closed_port()
    daemon = oversipd_daemon(server_script=SERVER_SCRIPT, start=False, settings={"$name": {"port": port}})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    line = daemon.wait_log(f"$name connection 'main': cannot connect to 127.0.0.1:{port}")[0]
    assert line.endswith("Connection refused")
'''

RESOURCE_README = """\
# $dist

The `$name` module for oversipd: each worker holds its own connection to a
line-based TCP service. It installs `oversipd/modules/$name.py` into the
`oversipd.modules` namespace.

## Install and test

    pip install -e '.[test]'      # or: pip install .
    pytest                        # starts real daemons (oversipd.testing plugin)

## Use

Declare connections in the server script:

```python
from oversipd import SystemEvents
from oversipd.modules import $name

@SystemEvents.on_initialize
def configure():
    $name.add_connection("main", host="127.0.0.1", port=7000)
```

and use them in a worker: `await $name.connection("main").request("PING")`.

Each connection is an `oversipd.worker_resource`: every worker opens its own
before its on_started callbacks and closes it after its on_terminated ones.
A wrong argument stops the daemon at start (exit status 1, the argument
named); so does a service that can't be reached, with the resource's name and
the reason. See oversipd's `docs/modules.md`.
"""

FILES_WITH_RESOURCE: dict[str, str] = {
    **FILES,
    "README.md": RESOURCE_README,
    "oversipd/modules/$name.py": RESOURCE_MODULE,
    "tests/test_$name.py": RESOURCE_TEST,
}
