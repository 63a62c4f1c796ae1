"""The server script for `make run`: the single SystemEvents handlers."""

from oversipd import Logger, SystemEvents, module_settings

log = Logger("server.py")


@SystemEvents.on_initialize
def configure_modules():
    log.log_info(f"on_initialize (master, before the fork); example settings: {module_settings('example')}")


@SystemEvents.on_started
def started():
    log.log_info("SystemEvents.on_started")


@SystemEvents.on_user_reload
def user_reload():
    log.log_notice("SystemEvents.on_user_reload (SIGUSR1)")


@SystemEvents.on_terminated
def terminated(error):
    log.log_info(f"SystemEvents.on_terminated(error={error})")
