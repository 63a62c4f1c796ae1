"""Issue 21, lever 1: the proxy's coroutines run at once; only one that waits becomes a Task."""

from __future__ import annotations

import asyncio

import pytest

from oversipd.sip.core.eager import start_eagerly


def run(body):
    return asyncio.run(body())


def test_a_coroutine_that_does_not_wait_finishes_in_the_call_and_makes_no_task():
    steps, tasks, failures = [], set(), []

    async def quick():
        steps.append("ran")

    async def body():
        start_eagerly(asyncio.get_running_loop(), quick(), tasks, failures.append)
        assert steps == ["ran"] and tasks == set()

    run(body)
    assert failures == []


def test_a_coroutine_that_waits_is_finished_by_a_task_with_what_it_waited_for():
    seen, tasks = [], set()

    async def waits(future):
        seen.append("before")
        seen.append(await future)
        await asyncio.sleep(0)          # a bare yield after the first wait
        seen.append(await asyncio.sleep(0.001, "slept"))

    async def body():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        start_eagerly(loop, waits(future), tasks, lambda error: seen.append(error))
        assert seen == ["before"] and len(tasks) == 1
        future.set_result("answer")
        await asyncio.gather(*tasks)
        assert seen == ["before", "answer", "slept"] and tasks == set()

    run(body)


@pytest.mark.parametrize("task_started", [False, True])
def test_a_waiting_coroutine_is_cancelled_where_it_waits(task_started):
    seen, tasks = [], set()

    async def waits(future):
        try:
            await future
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def body():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        start_eagerly(loop, waits(future), tasks, seen.append)
        (task,) = tasks
        if task_started:
            await asyncio.sleep(0)     # the Task's first step: it waits on the future now
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and future.cancelled() and seen == ["cancelled"]

    run(body)


def test_an_error_before_the_first_wait_goes_to_the_failure_callback_and_one_after_to_the_task():
    failures, tasks = [], set()

    async def fails_now():
        raise ValueError("now")

    async def fails_later(future):
        await future
        raise ValueError("later")

    async def body():
        loop = asyncio.get_running_loop()
        start_eagerly(loop, fails_now(), tasks, failures.append)
        assert [str(error) for error in failures] == ["now"] and tasks == set()
        future = loop.create_future()
        start_eagerly(loop, fails_later(future), tasks, failures.append)
        (task,) = tasks
        future.set_result(None)
        await asyncio.gather(task, return_exceptions=True)
        assert str(task.exception()) == "later"

    run(body)
