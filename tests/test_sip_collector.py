"""A call leaves the cycle collector nothing to free (issue 21, lever 2).

A worker's core (SipCore, a UdpListener on a real UDP socket, the
ProxyEngine, examples/proxy_server.py as the script) proxies calls between
two UDP peers of this process, the way bench/sip_cpu.py drives it.  With the
collector off and DEBUG_SAVEALL on, `gc.collect()` afterwards puts whatever
only a cycle kept alive into gc.garbage: a request, its Forward, its client
transaction and the script's callbacks must all have gone by reference
counting when their call ended.
"""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest

from bench import sip_cpu as harness

def cyclic_garbage(exchange) -> collections.Counter:
    """The objects, by type, that only the cycle collector frees after `exchange(worker)` ran."""

    async def run() -> collections.Counter:
        worker = harness.Worker(asyncio.get_running_loop())
        harness.load_script(harness.SCRIPT)
        await exchange(worker, 0)          # warm-up: caches, first-use imports
        await settle(worker)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await exchange(worker, 1000)
            await settle(worker)
            gc.collect()
            found = collections.Counter(type(thing).__qualname__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            worker.close()
        return found

    return asyncio.run(run())


async def settle(worker: harness.Worker) -> None:
    while worker.core.tasks:
        await asyncio.sleep(0)


async def answered_calls(worker: harness.Worker, first: int) -> None:
    await harness.run_calls(worker, 20, first, {kind: [] for kind in harness.KINDS})


async def options_for_us(worker: harness.Worker, first: int) -> None:
    await harness.run_options(worker, 20, first, [])


@pytest.mark.parametrize("exchange", [answered_calls, options_for_us])
def test_a_finished_exchange_leaves_no_cycle(exchange):
    assert cyclic_garbage(exchange) == collections.Counter()
