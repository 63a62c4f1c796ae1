"""Coroutines run at once, up to their first real wait: a Task only for those that wait.

Most of a proxy's per-request coroutines never wait: the DNS answer is
cached, the UDP socket or the TCP connection is there.  A Task for each
costs a Task object, a loop turn, a done callback and a set entry for
nothing.  `start_eagerly` steps the coroutine here, in the caller's frame
(what Python 3.12's eager task factory does); if it suspends on a future,
the rest of it becomes a Task that resumes from that very future.

The part before the first wait runs before the caller goes on, and outside
any Task (`asyncio.current_task()` is the caller's): use it for our own
coroutines, which are written for it, not for a user's handler.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any, Callable, Coroutine, Generator


def start_eagerly(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any],
                  keep: set, failed: Callable[[BaseException], None]) -> None:
    """Step `coroutine` now; if it waits, a Task (held in `keep` until done) finishes it.

    `failed(error)` gets an exception the part run here raised (a Task would
    have logged it as never retrieved); a Task's own failures stay the Task's.
    """
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        failed(error)
        return
    task = loop.create_task(_Resumed(coroutine, waiting))
    keep.add(task)
    task.add_done_callback(keep.discard)


_STARTED = object()


class _Resumed(collections.abc.Coroutine):
    """The rest of a started coroutine, as a coroutine a Task can run: its first step is the wait in progress.

    A Task's first step sends None: we hand it the future the coroutine is
    waiting on, as if the coroutine had just yielded it; from then on every
    send and throw goes straight through.  A Task cancelled before its first
    step throws at once: the future waited on is cancelled too, as a Task
    that had reached it would have done.
    """

    __slots__ = ("coroutine", "waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coroutine = coroutine
        self.waiting = waiting

    def send(self, value: Any) -> Any:
        waiting = self.waiting
        if waiting is not _STARTED:
            self.waiting = _STARTED
            return waiting
        return self.coroutine.send(value)

    def throw(self, *error: Any) -> Any:
        # A Task throws nothing but its cancellation.
        waiting, self.waiting = self.waiting, _STARTED
        if waiting is not _STARTED and isinstance(waiting, asyncio.Future):
            waiting.cancel()
        return self.coroutine.throw(*error)

    def close(self) -> None:
        self.coroutine.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("the rest of an eagerly started coroutine is run by a Task, not awaited")
