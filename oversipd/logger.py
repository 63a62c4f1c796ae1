"""The Logger mixin, oversipd's eight levels, and where log lines go."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import traceback
from typing import Any

# Eight levels, lowest first (SPEC §2), with the Python logging number each
# maps to and the sd-daemon(3) / syslog priority each carries.
LEVELS: dict[str, tuple[int, int]] = {
    "debug": (logging.DEBUG, 7),
    "info": (logging.INFO, 6),
    "notice": (25, 5),
    "warn": (logging.WARNING, 4),
    "error": (logging.ERROR, 3),
    "crit": (logging.CRITICAL, 2),
    "alert": (60, 1),
    "emerg": (70, 0),
}
LEVEL_NAMES = {number: name.upper() for name, (number, _) in LEVELS.items()}
PRIORITIES = {number: priority for number, priority in LEVELS.values()}
COLOURS = {"DEBUG": "cyan", "INFO": "green", "NOTICE": "bold_green", "WARN": "yellow",
           "ERROR": "red", "CRIT": "bold_red", "ALERT": "bold_red,bg_white",
           "EMERG": "bold_white,bg_red"}
TRACEBACK_LINES = 12  # "the start of its traceback": enough to find the frame

_log = logging.getLogger("oversipd")
_state = {"process_tag": "master"}


def level_number(name: str) -> int:
    return LEVELS[name][0]


def _level_name(number: int) -> str:
    """Our name for a level number, also for levels of foreign loggers."""
    for threshold in sorted(LEVEL_NAMES, reverse=True):
        if number >= threshold:
            return LEVEL_NAMES[threshold]
    return "DEBUG"


def _priority(number: int) -> int:
    """The sd-daemon/syslog priority (0 emerg .. 7 debug) of a level number."""
    return PRIORITIES[level_number(_level_name(number).lower())]


def text_of(message: Any) -> str:
    """str(message), even when a module's __str__ raises: a log line must not."""
    try:
        return str(message)
    except Exception:
        return f"<unprintable {type(message).__name__}>"


def render(message: Any) -> str:
    """A message as text; an exception as its text, type and traceback start."""
    if not isinstance(message, BaseException):
        return text_of(message)
    head = f"{text_of(message)} ({type(message).__name__})"
    lines = "".join(traceback.format_exception(message)).rstrip("\n").split("\n")
    return "\n".join([head, *lines[:TRACEBACK_LINES]])


def emit(level: str, log_id: str, message: Any, user: bool = False) -> None:
    number = LEVELS[level][0]
    if _log.isEnabledFor(number):
        _log.log(number, "%s", render(message), extra={"log_id": log_id, "user": user})


class Logger:
    """Mixin (or instance) giving log_system_<level> and log_<level> with a log_id."""

    def __init__(self, log_id: str | None = None) -> None:
        if log_id is not None:
            self.log_id = log_id

    def _log_id(self) -> str:
        return str(getattr(self, "log_id", None) or type(self).__name__)


def _make_method(level: str, user: bool):
    def method(self: Logger, message: Any) -> None:
        emit(level, self._log_id(), message, user)
    kind = "user script" if user else "module"
    method.__name__ = f"log_{level}" if user else f"log_system_{level}"
    method.__doc__ = f"Log `message` at {level.upper()} ({kind} line)."
    return method


for _level in LEVELS:
    setattr(Logger, f"log_system_{_level}", _make_method(_level, user=False))
    setattr(Logger, f"log_{_level}", _make_method(_level, user=True))

core_log = Logger("oversipd")


# --- formatting and destinations ------------------------------------------

class _Fields(logging.Filter):
    """Fills in the fields our formats use, also for foreign loggers (asyncio...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "log_id"):
            record.log_id = record.name
            record.user = False
            if record.exc_info:
                record.msg = f"{record.getMessage()}\n{render(record.exc_info[1])}"
                record.args, record.exc_info, record.exc_text = (), None, None
        # Our names (NOTICE, WARN, CRIT...) also for colorlog, which keys on levelname.
        record.level = record.levelname = _level_name(record.levelno)
        record.process_tag = _state["process_tag"]
        record.user_mark = "[user] " if record.user else ""
        return True


BODY = "%(level)s: <%(log_id)s> %(user_mark)s%(message)s"


class _JournalFormatter(logging.Formatter):
    """sd-daemon(3): every line starts with its `<N>` priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _stderr_is_journal() -> bool:
    """True when JOURNAL_STREAM names stderr's device:inode (sd-daemon(3))."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def _stderr_formatter() -> logging.Formatter:
    if _stderr_is_journal():
        return _JournalFormatter("[%(process_tag)s] " + BODY)
    fmt = "%(asctime)s [%(process_tag)s] " + BODY
    if sys.stderr.isatty():
        import colorlog  # only a terminal pays for the import
        return colorlog.ColoredFormatter("%(log_color)s" + fmt, log_colors=COLOURS, reset=True)
    return logging.Formatter(fmt)


class _SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler that maps our eight levels to the eight syslog priorities."""

    PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

    def emit(self, record: logging.LogRecord) -> None:
        self._levelno = record.levelno
        super().emit(record)

    def mapPriority(self, levelName: str) -> str:  # noqa: N802 (stdlib name)
        return self.PRIORITY_NAMES[_priority(self._levelno)]


def _syslog_handler(facility: str) -> logging.Handler:
    handler = _SyslogHandler(address="/dev/log",
                             facility=logging.handlers.SysLogHandler.facility_names[facility])
    handler.setFormatter(logging.Formatter(f"oversipd[%(process)d]: [%(process_tag)s] {BODY}"))
    return handler


def configure(level: str, syslog_facility: str | None = None) -> None:
    """Send every log line to stderr (or syslog), at and above `level`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if syslog_facility:
        handler: logging.Handler = _syslog_handler(syslog_facility)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_stderr_formatter())
    handler.addFilter(_Fields())
    root.addHandler(handler)
    logging.getLogger("asyncio").setLevel(logging.INFO)  # "Using selector: ..." is noise
    set_level(level)


def add_handler(handler: logging.Handler) -> None:
    """Add a destination for log lines, formatted `LEVEL: <log_id> message`."""
    handler.setFormatter(logging.Formatter(BODY))
    handler.addFilter(_Fields())
    logging.getLogger().addHandler(handler)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level_number(level))


def set_process_tag(tag: str) -> None:
    _state["process_tag"] = tag
