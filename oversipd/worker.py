"""A worker process: one asyncio SelectorEventLoop (the reactor) running the modules' callbacks."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import Any, NoReturn

import oversipd

from . import control, logger, privileges, process, resources
from .callbacks import SystemCallbacks, SystemEvents, describe, is_cancellation
from .control import Channel
from .errors import WORKER_EXIT_CRASHED
from .forking import close_inherited, reset_signals_after_fork
from .heartbeat import HeartbeatBoard, cell_of
from .launcher import Launcher
from .logger import Logger
from .settings import Settings

# Seconds that a retiring worker's SIP work leaves for its on_terminated within graceful_timeout.
RETIRE_MARGIN = 1.0
# Allocations between two young-generation collections (CPython's default is
# 700).  A proxied SIP call allocates thousands of objects that live for the
# transaction; at 700 the cycle collector took 27 of 90 µs per proxied
# message, at 10000 it takes 12 (`make bench-sip-cpu`), for a few hundred
# kilobytes more of young objects.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_collector() -> None:
    """The cycle collector's pace in a worker (the master's objects are frozen before the fork)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def worker_main(slot_id: int, channel: Channel, settings: Settings,
                board: HeartbeatBoard, inherited_fds: list[int], generation: int = 1) -> NoReturn:
    """Entry point in the forked child; never returns."""
    status = WORKER_EXIT_CRASHED
    try:
        reset_signals_after_fork()  # faulthandler stays: the master enabled it before the fork
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        close_inherited(inherited_fds)
        tune_collector()
        process.become_worker(slot_id, generation)
        logger.set_process_tag(f"worker {slot_id}" if generation == 1 else f"worker {slot_id}, generation {generation}")
        process.set_title(process.worker_title(slot_id, generation))
        privileges.drop(settings.core.user, settings.core.group)
        status = Worker(slot_id, channel, settings, board, generation).run()
    except BaseException as error:  # nothing may unwind into the master's frames
        Logger("Worker").log_system_crit(error)
    finally:
        # os._exit: the master's atexit handlers and finally blocks (pid
        # file removal, ...) must not run again here.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


class Worker(Logger):
    """Runs the callback lists in order inside the reactor and answers the master."""

    def __init__(self, slot_id: int, channel: Channel, settings: Settings,
                 board: HeartbeatBoard, generation: int = 1) -> None:
        self.log_id = f"Worker {slot_id}"
        self.slot_id = slot_id
        self.generation = generation
        self.cell = cell_of(slot_id, generation)
        self.channel = channel
        self.settings = settings
        self.board = board
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested: asyncio.Future[bool] | None = None
        # The lists never overlap: starting, reloading and user reloads
        # take turns on this lock.
        self.turn: asyncio.Lock | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.terminated = False
        self.next_beat: asyncio.TimerHandle | None = None
        self.sip: Any = None   # oversipd.sip.service.WorkerSip when [sip] is configured

    def run(self) -> int:
        loop = asyncio.SelectorEventLoop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            return loop.run_until_complete(self.main())
        except BaseException as error:  # an exception escaped the reactor
            self.log_system_crit(f"exception escaped the reactor: {error!r}")
            self.log_system_crit(error)
            try:
                loop.run_until_complete(self.terminate(error=True))
            except BaseException as again:
                self.log_system_crit(again)
            return WORKER_EXIT_CRASHED

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = loop.create_future()
        self.turn = asyncio.Lock()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, False)
        loop.add_reader(self.channel.fileno(), self.on_control)
        self.beat()
        self.spawn(self.start())
        error = await self.stop_requested
        await self.terminate(error)
        return 0

    # --- master messages and signals -----------------------------------

    def on_control(self) -> None:
        messages = self.channel.receive()
        if messages is None:
            assert self.loop is not None
            self.loop.remove_reader(self.channel.fileno())
            self.log_system_crit("the master is gone; stopping")
            self.request_stop(True)
            return
        for kind, argument, sock in messages:
            if kind == control.STOP:
                self.request_stop(bool(argument))
            elif kind == control.RETIRE:
                self.spawn(self.retire())
            elif kind == control.RELOAD:
                self.spawn(self.reload(argument))
            elif kind == control.USER_RELOAD:
                self.spawn(self.user_reload())
            elif kind == control.ADOPT:
                self.adopt_connection(*argument, sock)

    def adopt_connection(self, key: Any, unread: bytes, sock: Any) -> None:
        """A connection the retiring worker of our slot handed over (oversipd.kept).

        None came when we had no descriptor left: the master's duplicate is
        then all there is, and it goes when we exit.
        """
        if sock is None:
            return
        if self.sip is None:
            sock.close()
            return
        self.spawn(self.sip.adopt_handed_over(key, unread, sock))

    def request_stop(self, error: bool) -> None:
        if self.stop_requested is not None and not self.stop_requested.done():
            self.stop_requested.set_result(error)

    def spawn(self, coroutine: Any) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def beat(self) -> None:
        assert self.loop is not None
        if self.next_beat is not None:
            self.next_beat.cancel()
        self.board.beat(self.cell)
        self.next_beat = self.loop.call_later(self.board.interval(self.settings.core.worker_timeout), self.beat)

    # --- the lifecycle ------------------------------------------------------

    async def start(self) -> None:
        assert self.turn is not None
        async with self.turn:
            # Before any callback, so every callback finds them open.
            resources.on_degraded_change(self.report_degraded)
            await resources.open_declared()
            await SystemCallbacks.on_started.run(on_error=self.started_failed)
            try:
                await SystemEvents.run("on_started")
            except BaseException as error:
                if is_cancellation(error):
                    raise
                if isinstance(error, resources.ResourceNotOpenError) and not resources.failure_is_fatal():
                    self.log_system_error(f"SystemEvents.on_started: {error}")   # degraded, as above
                else:
                    self.log_system_crit("SystemEvents.on_started raised:")
                    self.log_system_crit(error)
                    Launcher.fatal("SystemEvents.on_started failed")
            if self.settings.sip is not None:
                try:
                    await self.start_sip()
                except Exception as error:
                    self.log_system_crit("cannot serve SIP:")
                    self.log_system_crit(error)
                    Launcher.fatal("the SIP listeners failed to start")
            self.channel.send(control.STARTED)

    async def start_sip(self) -> None:
        """Serve SIP once the modules are ready: a request never meets a half-started worker."""
        from .sip.service import WorkerSip

        assert self.loop is not None
        self.sip = WorkerSip(self.settings, self.slot_id, self.loop, self.generation)
        await self.sip.start()

    def started_failed(self, callback: Any, error: BaseException) -> None:
        if isinstance(error, resources.ResourceNotOpenError) and not resources.failure_is_fatal():
            # A respawn while a store is down: the store's retries bring it back.
            self.log_system_error(f"on_started callback {describe(callback)}: {error}")
            return
        self.log_system_crit(f"on_started callback {describe(callback)} raised:")
        self.log_system_crit(error)
        Launcher.fatal(f"on_started callback {describe(callback)} failed")

    def report_degraded(self, names: list[str]) -> None:
        """SIP.md §15: the master (systemd's STATUS) and `oversipd status` (our title) show which slot is degraded."""
        process.set_title(process.worker_title(self.slot_id, self.generation, degraded=bool(names)))
        self.channel.send(control.DEGRADED, tuple(names))

    async def reload(self, settings: Settings) -> None:
        assert self.turn is not None
        async with self.turn:
            self.settings = settings
            oversipd.config = settings
            logger.set_level(settings.core.log_level)
            if self.sip is not None:
                self.sip.apply_settings(settings)
            self.beat()  # at the new worker_timeout's pace from now on
            await SystemCallbacks.on_reload.run(on_error=self.callback_failed("on_reload"))
            self.channel.send(control.RELOADED)

    async def retire(self) -> None:
        """A newer generation serves: read no new request, finish those in hand, then stop (error=False)."""
        if self.sip is not None:
            self.sip.stop_reading()
            self.log_system_info("retiring: no new SIP request is read here")
            # A margin under graceful_timeout: the master's SIGKILL would skip on_terminated.
            await self.sip.drain(grace=max(0.0, self.settings.core.graceful_timeout - RETIRE_MARGIN))
        self.request_stop(False)

    async def user_reload(self) -> None:
        assert self.turn is not None
        async with self.turn:
            await self.run_event("on_user_reload")

    async def terminate(self, error: bool) -> None:
        """on_terminated: the server script's handler, the modules' in reverse order, then the resources."""
        if self.terminated:
            return
        self.terminated = True
        if self.sip is not None:
            self.sip.close()   # no new request starts while the worker stops
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.run_event("on_terminated", error)
        await SystemCallbacks.on_terminated.run(error, reverse=True,
                                                on_error=self.callback_failed("on_terminated"))
        await resources.close_opened()

    # --- failures that are logged, not fatal ---------------------------------

    def callback_failed(self, list_name: str):
        def log_failure(callback: Any, error: BaseException) -> None:
            self.log_system_crit(f"{list_name} callback {describe(callback)} raised:")
            self.log_system_crit(error)
        return log_failure

    async def run_event(self, name: str, *args: Any) -> None:
        try:
            await SystemEvents.run(name, *args)
        except BaseException as error:
            if is_cancellation(error):
                raise
            self.log_system_crit(f"SystemEvents.{name} raised:")
            self.log_system_crit(error)
