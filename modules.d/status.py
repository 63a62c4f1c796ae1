"""An example drop-in module: an HTTP status endpoint on a `[listen.NAME]` socket.

    GET /health   -> 200 {"worker": K, "pid": ..., "uptime_s": ..., "reloads": ...}
    HEAD /health  -> the same headers, no body
    /health, any other method -> 405 (Allow: GET, HEAD);  any other path -> 404
    GET /phone    -> a small softphone (JsSIP over WSS, SIP.md §12), when
                     `phone` names its directory; /phone/phone.js and
                     /phone/jssip.js are its script and JsSIP's bundle

`uptime_s` is the seconds since this worker started serving; `reloads`
counts the reloads (SIGHUP) this worker ran. HTTP/1.1 keep-alive is
supported. A client gets `timeout` seconds to send each request (and to
read the answer); the request line and headers may not exceed
`max_request_bytes` (431 otherwise); a request with a body is answered
and the connection closed (no body is ever read).

    [listen.status]
    address = "tcp://127.0.0.1:8060"

    [modules.status]          # all optional
    listen = "status"         # the [listen.NAME] section to serve
    timeout = 5.0             # seconds; applied again on reload
    max_request_bytes = 8192  # takes effect when a worker starts
    phone = ""                # the /phone page's directory (relative to the
                              # configuration file); "" = no page

`phone` is read once, in the master: the files are served from memory, and
a directory without the page or without its JsSIP bundle (build/jssip.js,
which `make run` makes) is a configuration error naming the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, Callable, NamedTuple

import oversipd
from oversipd import Logger, SystemCallbacks
from oversipd.errors import ConfigError

DEFAULTS: dict[str, Any] = {"listen": "status", "timeout": 5.0, "max_request_bytes": 8192, "phone": ""}
MIN_REQUEST_BYTES = 256
HEALTH_PATH = "/health"
ALLOWED_METHODS = ("GET", "HEAD")
JSON = "application/json"
# The /phone page: URL path -> (file in the `phone` directory, Content-Type).
PHONE_FILES = {"/phone": ("phone.html", "text/html; charset=utf-8"),
               "/phone/phone.js": ("phone.js", "text/javascript; charset=utf-8"),
               "/phone/jssip.js": ("build/jssip.js", "text/javascript; charset=utf-8")}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}
# Seconds for answers in progress when the worker stops: what graceful_timeout
# leaves after this margin (the master's SIGKILL would cut them), at least MIN_STOP_GRACE.
STOP_MARGIN = 1.0
MIN_STOP_GRACE = 2.0
# asyncio (3.11) runs a connection accepted in loop turn T as: the accept
# task's first step at T+1 (protocol, transport), connection_made at T+2 (it
# creates the client task), the client task's first step at T+3, where it
# joins `clients`.  A stop in that same turn T resumes after its third
# sleep(0) in T+3 too, before or after the client task by queue order: with
# 3 turns a connection accepted just then went unanswered now and then (a
# client "lost" over a generation swap, ~1 run in 8).  One turn more is
# always enough.
ACCEPT_TURNS = 4


class BadRequest(Exception):
    """A request that cannot be parsed: answered with `status` and the connection closed."""

    def __init__(self, status: int = 400) -> None:
        super().__init__(REASONS[status])
        self.status = status


def read_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """`[modules.status]` merged over DEFAULTS; a wrong value raises ValueError naming the key."""
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"[modules.status]: unknown key(s) {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS, **raw}
    if not isinstance(settings["listen"], str):
        raise ValueError(f"[modules.status] listen: expected a section name, got {settings['listen']!r}")
    timeout = settings["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"[modules.status] timeout: expected seconds > 0, got {timeout!r}")
    size = settings["max_request_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_REQUEST_BYTES:
        raise ValueError(f"[modules.status] max_request_bytes: expected an integer >= "
                         f"{MIN_REQUEST_BYTES}, got {size!r}")
    if not isinstance(settings["phone"], str):
        raise ValueError(f"[modules.status] phone: expected a directory, got {settings['phone']!r}")
    return settings


class Page(NamedTuple):
    content_type: str
    body: bytes


def read_pages(phone: str) -> dict[str, Page]:
    """The /phone page's files by URL path ({} when `phone` is ""); a missing one is a ConfigError."""
    if not phone:
        return {}
    directory = Path(oversipd.config.path).parent / phone   # relative to the configuration file
    pages = {}
    for path, (name, content_type) in PHONE_FILES.items():
        try:
            pages[path] = Page(content_type, (directory / name).read_bytes())
        except OSError as error:
            raise ConfigError(str(oversipd.config.path), "modules.status.phone",
                              f"cannot read {directory / name} ({error.strerror}); "
                              "`make run` makes the JsSIP bundle") from None
    return pages


class Answer(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool
    head_only: bool = False
    extra: str = ""
    content_type: str = JSON


class HttpDate:
    """The Date header, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
        return self.text


class StatusServer(Logger):
    """HTTP/1.1 on asyncio streams, answering GET /health with `health()` as JSON."""

    log_id = "Status module"

    def __init__(self, health: Callable[[], dict[str, Any]], timeout: float,
                 max_request_bytes: int, pages: dict[str, Page] | None = None) -> None:
        self.health = health
        self.pages = pages or {}
        self.timeout = float(timeout)
        self.max_request_bytes = max_request_bytes
        self.server: asyncio.base_events.Server | None = None
        self.closing = False
        self.idle: set[asyncio.Task[Any]] = set()     # waiting for a next request: safe to cancel
        self.clients: set[asyncio.Task[Any]] = set()
        self.date = HttpDate()

    async def start(self, sock: Any) -> None:
        # backlog=1 is how many connections asyncio accepts per wake-up (the
        # kernel backlog is the [listen.*] section's). One at a time, like
        # nginx's default `multi_accept off`: every worker shares the socket,
        # and a worker that took a whole burst would leave the others idle.
        self.server = await asyncio.start_server(self.serve_client, sock=sock, backlog=1,
                                                 limit=self.max_request_bytes)

    async def stop(self) -> None:
        """Stop accepting, drop idle keep-alive clients, give the others until graceful_timeout.

        A connection accepted but not yet answered gets its answer: its client
        meets no failure when a worker stops (a newer generation takes over,
        SPEC §5).  One idle between two requests is closed, as HTTP allows.
        """
        self.closing = True
        if self.server is not None:
            self.server.close()
        for _ in range(ACCEPT_TURNS):
            await asyncio.sleep(0)
        for task in list(self.idle):
            task.cancel()
        if self.clients:
            grace = max(MIN_STOP_GRACE, oversipd.config.core.graceful_timeout - STOP_MARGIN)
            await asyncio.wait(list(self.clients), timeout=grace)

    # --- one connection ---------------------------------------------------------------

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            keep_alive, answered = True, False
            while keep_alive and (not self.closing or not answered):
                keep_alive = await self.serve_request(reader, writer, task, answered)
                answered = True
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass  # stopping, the client went away, or too slow: just close
        finally:
            self.clients.discard(task)
            self.idle.discard(task)
            writer.close()

    async def serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            task: asyncio.Task[Any], answered: bool) -> bool:
        """Read one request and answer it; True to keep the connection for another."""
        async with asyncio.timeout(self.timeout):
            if answered:  # the first request of a connection is always awaited
                self.idle.add(task)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return False  # closed by the client
            except asyncio.LimitOverrunError:
                head = None
            finally:
                self.idle.discard(task)
            answer = self.answer(head)
            writer.write(self.response(answer._replace(keep_alive=answer.keep_alive and not self.closing)))
            await writer.drain()
        return answer.keep_alive

    def answer(self, head: bytes | None) -> Answer:
        """The answer to a request head."""
        if head is None:
            return Answer(431, b'{"error": "request too large"}', False)
        try:
            method, path, keep_alive = self.parse(head)
        except BadRequest as bad:
            return Answer(bad.status, json.dumps({"error": str(bad).lower()}).encode(), False)
        if path != HEALTH_PATH and path not in self.pages:
            return Answer(404, b'{"error": "not found"}', keep_alive, method == "HEAD")
        if method not in ALLOWED_METHODS:
            return Answer(405, b'{"error": "method not allowed"}', keep_alive,
                          extra=f"Allow: {', '.join(ALLOWED_METHODS)}\r\n")
        if path in self.pages:
            page = self.pages[path]
            return Answer(200, page.body, keep_alive, method == "HEAD", content_type=page.content_type)
        return Answer(200, json.dumps(self.health()).encode(), keep_alive, method == "HEAD")

    @staticmethod
    def parse(head: bytes) -> tuple[str, str, bool]:
        """(method, path, keep_alive) of a request head; BadRequest when it is not HTTP/1.x."""
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise BadRequest(400)
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadRequest(505 if version.startswith("HTTP/") else 400)
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise BadRequest(400)
            headers[name.lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        # No body is ever read: after one, the connection cannot be reused.
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep_alive = False
        return method, target.split("?", 1)[0], keep_alive

    def response(self, answer: Answer) -> bytes:
        head = (f"HTTP/1.1 {answer.status} {REASONS[answer.status]}\r\n"
                f"Date: {self.date.now()}\r\n"
                f"Content-Type: {answer.content_type}\r\n"
                "Cache-Control: no-store\r\n"
                f"Content-Length: {len(answer.body)}\r\n"
                f"Connection: {'keep-alive' if answer.keep_alive else 'close'}\r\n"
                f"{answer.extra}\r\n")
        return head.encode() + (b"" if answer.head_only else answer.body)


# --- the module: one StatusServer per worker ------------------------------------------

class WorkerHealth:
    """What GET /health reports about this worker."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.reloads = 0

    def __call__(self) -> dict[str, Any]:
        return {"worker": oversipd.process.worker_id, "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started, 3), "reloads": self.reloads}


log = Logger("Status module")
# Checked at import, in the master: a wrong value stops the daemon before any fork.
# The page is read here too: every worker forked from this master serves it.
pages = read_pages(read_settings(oversipd.module_settings("status"))["phone"])
health = WorkerHealth()
server: StatusServer | None = None


@SystemCallbacks.on_started
async def start_serving() -> None:
    global server
    settings = read_settings(oversipd.module_settings("status"))
    try:
        sock = oversipd.listen_socket(settings["listen"])
    except KeyError:
        raise RuntimeError(f"no [listen.{settings['listen']}] section to serve the status on "
                           "(add one, or set [modules.status] listen)") from None
    health.started = time.monotonic()
    server = StatusServer(health, settings["timeout"], settings["max_request_bytes"], pages)
    await server.start(sock)
    log.log_system_info(f"worker {oversipd.process.worker_id}: serving GET {HEALTH_PATH} "
                        f"on [listen.{settings['listen']}]")


@SystemCallbacks.on_reload
def count_reload() -> None:
    health.reloads += 1
    if server is not None:
        server.timeout = float(read_settings(oversipd.module_settings("status"))["timeout"])


@SystemCallbacks.on_terminated
async def stop_serving(error: bool) -> None:
    if server is not None:  # on_started may not have completed
        await server.stop()
