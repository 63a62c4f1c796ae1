"""What the database module tests share: a daemon whose server script declares a pool, and the waits.

The tests of oversip-mod-mysql and oversip-mod-postgresql start the same
daemons with a different module (`mysql`, `postgresql`); the pool's
options come from the settings table `settings_key`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

from oversipd.testing import DEFAULT_TIMEOUT, Daemon

from sip_helpers import SipServer, UdpClient

POLL_INTERVAL = 0.05
EXITING = "exiting with error status"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Poll `condition` (a server-side state with no event to wait on) until it holds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_INTERVAL)
    return result


def pool_server_script(module: str, settings_key: str) -> str:
    """A server script declaring the pool its settings table describes (`pool_name` defaults to "db")."""
    return f"""
from oversipd import SystemEvents, module_settings
from oversipd.modules import {module}

@SystemEvents.on_initialize
def configure():
    settings = module_settings("{settings_key}")
    {module}.add_pool(settings.pop("pool_name", "db"), **settings)
"""


def pool_daemon_options(module: str, settings_key: str, connect_options: dict[str, Any],
                        **pool_options: Any) -> dict[str, Any]:
    """oversipd_daemon() options: the pool server script, the server's options and `pool_options`."""
    return {"server_script": pool_server_script(module, settings_key),
            "settings": {settings_key: {**connect_options, **pool_options}}}


def run_in_each_worker(coroutine: str) -> str:
    """Module source that runs `coroutine()` (defined above it) as a task in every worker, cancelled at the end."""
    return f"""

@SystemCallbacks.on_started
def start():
    running["task"] = asyncio.get_running_loop().create_task({coroutine}())


@SystemCallbacks.on_terminated
async def stop(error):
    task = running.get("task")
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
"""


def pool_errors_script(module: str, settings_key: str) -> str:
    """A server script recording what pool() says in the master and in a worker, for "db" and "nope"."""
    return f"""
from oversipd import SystemCallbacks, SystemEvents, module_settings
from oversipd.modules import {module}
from oversipd.testing import record


def outcome(name):
    try:
        {module}.pool(name)
    except Exception as error:
        return {{"type": type(error).__name__, "message": str(error), "lookup": isinstance(error, LookupError)}}
    return {{"type": None}}


@SystemEvents.on_initialize
def configure():
    {module}.add_pool("db", **module_settings("{settings_key}"))
    record("in_master", **outcome("db"))


@SystemCallbacks.on_started
def started():
    record("unknown", **outcome("nope"))
    record("known", **outcome("db"))
"""


def pool_lookup_outcomes(daemon: Daemon) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The events of pool_errors_script: pool("nope") and pool("db") in a worker, pool("db") in the master."""
    unknown = daemon.wait_events("unknown")[0]
    known = daemon.wait_events("known")[0]
    in_master = daemon.wait_events("in_master")[0]
    return unknown, known, in_master


def fatal_start_line(daemon: Daemon, text: str) -> str:
    """Start `daemon`, expect exit status 1 and the error exit logged; the log line with `text`."""
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    line = daemon.wait_log(text)[0]
    daemon.wait_log(EXITING)
    return line


# --- SIP.md §15: a worker respawned while its store is down ---------------------------

def sip_store_script(module: str, settings_key: str, query: str) -> str:
    """The pool's server script, serving SIP: OPTIONS needs no store, any other request runs `query`.

    `query` is async code using `{module}.pool("db")`; a pool that is not open
    raises PoolNotOpenError (a ResourceNotOpenError), which the core answers 503.
    """
    body = "\n".join("    " + line for line in query.strip().splitlines())
    return pool_server_script(module, settings_key) + f"""
from oversipd import SipEvents

@SipEvents.on_request
async def on_request(request):
    if request.sip_method == "OPTIONS":
        request.reply(200)
        return
{body}
    request.reply(200)
"""


class StoreServer(Protocol):
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def is_running(self) -> bool: ...


def respawn_while_the_store_is_down(server: SipServer, store: StoreServer, pid_file: Path, resource: str,
                                    back_timeout: float) -> None:
    """Store stopped, worker SIGKILLed: the respawn serves degraded (503 for the store), then recovers by itself."""
    daemon = server.daemon
    client = UdpClient(server)
    client.request("MESSAGE")
    assert client.response().status == 200
    try:
        store.stop()
        down = daemon.mark()
        daemon.kill_worker(1)
        daemon.wait_log("serving without it, retrying in the background", since=down)
        status_notified(daemon, f"degraded: worker 1 ({resource})")
        client.request("OPTIONS")   # what needs no store is served
        assert client.response().status == 200
        client.request("MESSAGE")
        refused = client.response()
        assert (refused.status, refused.header("Retry-After")) == (503, "10")
        status = daemon.run_command("status", "--pid-file", str(pid_file)).stdout
        assert any(line.startswith("worker") and "degraded" in line for line in status.splitlines()), status
        assert daemon.running
    finally:
        if not store.is_running():
            store.start()
    daemon.wait_log("open again; no longer degraded", since=down, timeout=back_timeout)
    client.request("MESSAGE")
    assert client.response().status == 200
    assert "degraded" not in daemon.run_command("status", "--pid-file", str(pid_file)).stdout
    assert daemon.stop() == 0


def status_notified(daemon: Daemon, text: str) -> None:
    """Wait for a STATUS= (sd_notify) that contains `text`."""
    daemon.notifications.wait_for(lambda items: any(text in line for message in items for line in message
                                                    if line.startswith("STATUS=")),
                                  DEFAULT_TIMEOUT, f"a STATUS with {text!r}")
