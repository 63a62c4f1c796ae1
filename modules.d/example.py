"""An example drop-in module: logs from every callback list."""

import asyncio

import oversipd
from oversipd import Logger, SystemCallbacks


class Example(Logger):
    log_id = "Example module"

    def __init__(self):
        self.ticks = 0
        self.task = None

    async def tick(self):
        while True:
            await asyncio.sleep(5)
            self.ticks += 1
            self.log_system_debug(f"worker {oversipd.process.worker_id}: tick {self.ticks}")


example = Example()
example.log_system_info(f"imported in the {oversipd.process.role}")


@SystemCallbacks.on_started
async def start():
    greeting = oversipd.module_settings("example").get("greeting", "hello")
    example.log_system_notice(f"on_started in worker {oversipd.process.worker_id}: {greeting}")
    example.task = asyncio.get_running_loop().create_task(example.tick())


@SystemCallbacks.on_reload
def reload():
    greeting = oversipd.module_settings("example").get("greeting", "hello")
    example.log_system_notice(f"on_reload in worker {oversipd.process.worker_id}: {greeting}")


@SystemCallbacks.on_terminated
def terminated(error):
    if example.task is not None:  # on_started may not have completed
        example.task.cancel()
    example.log_system_notice(f"on_terminated(error={error}) in worker {oversipd.process.worker_id}")
