"""Launcher.fatal: log at CRIT and take the whole daemon down with status 1."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from . import process
from .errors import EXITING_WITH_ERROR, WORKER_EXIT_FATAL, HaltServer
from .logger import Logger, text_of


class Launcher:
    _log = Logger("Launcher")

    @staticmethod
    def fatal(message: Any) -> NoReturn:
        """Log `message` (a str or an exception) at CRIT and bring the daemon down."""
        Launcher._log.log_system_crit(message)
        Launcher._log.log_system_crit(EXITING_WITH_ERROR)
        if process.role == "worker":
            # The master sees this status and stops the other workers; this
            # process runs no more callbacks (as in OverSIP).
            sys.stderr.flush()
            os._exit(WORKER_EXIT_FATAL)
        raise HaltServer(text_of(message))
