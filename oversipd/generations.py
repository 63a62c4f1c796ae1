"""New generations of workers on freshly imported module code (SPEC §5, "Code changes on reload").

The master re-imports the module code in its own process (README,
"Choices": why not re-exec or a zygote): it forgets every module the
server script and the drop-ins brought in, imports them again and runs
`on_initialize`, then forks the new generation from that state.  Before
it does, a throw-away child (`start_check`) does the same import, so code
that does not import never touches the master.  What the master forgets
is kept in a `CodeSnapshot`, so a generation that fails to start is
undone and the master can fork the old code again (respawns of the old
generation keep working).

Imported anew: `oversipd.modules.*` and the server script; on SIGUSR2
also the third-party packages they imported (module_code_names).  Kept:
oversipd itself (an upgraded one is run by re-executing the master:
reexec.py), the standard library, and third-party packages when one of
them loaded a C extension (CPython cannot load a new build of an
extension into a running process; a restart is needed).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.machinery
import os
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

from . import loader, process, resources
from . import modules as modules_namespace
from .callbacks import SystemCallbacks, SystemEvents, script_handlers, set_script_handlers
from .errors import ConfigError, HaltServer
from .loader import SERVER_SCRIPT_MODULE, ModuleLoadError

if TYPE_CHECKING:
    from .fingerprint import Fingerprint
    from .settings import Settings

CORE_PACKAGE = "oversipd"
CHECK_OK = "ok"
# A check child that has not answered after this long is killed and the
# reload refused: a module whose top level blocks must not hold reloads up.
CHECK_TIMEOUT = 60.0
CHECK_TITLE = "oversipd: checking new module code"
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


class SwapPhase(enum.Enum):
    CHECKING = "checking"   # the throw-away child imports the new code
    STARTING = "starting"   # the new generation runs on_started; the old one serves
    RETIRING = "retiring"   # the generation that does not serve (the old one, or a failed new one) exits


@dataclass
class Swap:
    """One code reload in progress, from the check to the old generation's last exit."""

    settings: "Settings"           # what the new generation runs with
    reason: str                    # what changed, or "SIGUSR2"
    dependencies: bool = False     # SIGUSR2: third-party packages are imported anew too
    phase: SwapPhase = SwapPhase.CHECKING
    check_pid: int | None = None
    check_fd: int | None = None
    check_deadline: float | None = None
    check_output: bytes = b""
    snapshot: "CodeSnapshot | None" = None
    fingerprint: "Fingerprint | None" = None
    old_settings: "Settings | None" = None
    old_target: int = 0            # target_workers before the swap, restored if it fails
    failure: str | None = None     # why the new generation failed to start (then it is what retires)
    core_upgrade: bool = False     # the installed oversipd differs: checked by its own `check`, then exec (reexec.py)
    check_status: int | None = None  # the check child's exit status, once reaped


# --- which modules belong to the module code ------------------------------------------------

# What the module code imported (its imports and on_initialize), as opposed
# to what oversipd imports for itself, sometimes lazily (setproctitle).
_imported_by_module_code: set[str] = set()


@contextlib.contextmanager
def running_module_code() -> Iterator[None]:
    """Around the master's imports of module code and on_initialize: note what they import."""
    before = set(sys.modules)
    try:
        yield
    finally:
        _imported_by_module_code.update(set(sys.modules) - before)


def module_code_names(dependencies: bool) -> list[str]:
    """The sys.modules entries a new generation imports afresh.

    Always the module code: `oversipd.modules.*` and the server script.
    With `dependencies` (SIGUSR2) also the third-party packages imported
    since start-up (not the standard library, not oversipd) -- unless one
    of them loaded a C extension: such a package cannot be loaded anew and
    may hold objects of the others, so then none of them is.
    """
    names = [name for name in sys.modules if _is_module_code(name)]
    return names + (reloadable_dependencies() if dependencies else [])


def reloadable_dependencies() -> list[str]:
    deps = _dependencies()
    return [] if _with_extensions(deps) else deps


def kept_dependencies() -> list[str]:
    """Top-level third-party packages a SIGUSR2 cannot import anew (see module_code_names)."""
    deps = _dependencies()
    return sorted({name.partition(".")[0] for name in deps}) if _with_extensions(deps) else []


def _is_module_code(name: str) -> bool:
    return name.startswith(modules_namespace.__name__ + ".") or name == SERVER_SCRIPT_MODULE


def _dependencies() -> list[str]:
    return [name for name in sys.modules if name in _imported_by_module_code and not _is_module_code(name)
            and _is_third_party(name)]


def _is_third_party(name: str) -> bool:
    top = name.partition(".")[0]
    return top != CORE_PACKAGE and top not in sys.stdlib_module_names and not top.startswith("_")


def _with_extensions(names: list[str]) -> bool:
    return any((getattr(sys.modules.get(name), "__file__", None) or "").endswith(EXTENSION_SUFFIXES)
               for name in names)


# --- forgetting and restoring module code ---------------------------------------------------

@dataclass
class CodeSnapshot:
    """The master's module code as it was before a new generation's import."""

    modules: dict[str, ModuleType] = field(default_factory=dict)
    callbacks: dict[str, list[Any]] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    resources: list[Any] = field(default_factory=list)
    script_handlers: tuple[Any, ...] = ()
    namespace_path: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> "CodeSnapshot":
        return cls(modules={name: sys.modules[name] for name in module_code_names(dependencies=True)},
                   callbacks={name: list(getattr(SystemCallbacks, name)._callbacks)
                              for name in ("on_started", "on_reload", "on_terminated")},
                   events=dict(SystemEvents._handlers),
                   resources=list(resources._declared),
                   script_handlers=script_handlers(),
                   namespace_path=list(modules_namespace.__path__))

    def restore(self) -> None:
        """Put the snapshot's modules and callbacks back, dropping whatever was imported since."""
        forget_module_code(dependencies=True)
        sys.modules.update(self.modules)
        for name, module in self.modules.items():
            _set_on_parent(name, module)
        for name, callbacks in self.callbacks.items():
            getattr(SystemCallbacks, name)._callbacks[:] = callbacks
        SystemEvents._handlers.clear()
        SystemEvents._handlers.update(self.events)
        resources._declared[:] = self.resources
        set_script_handlers(self.script_handlers)
        modules_namespace.__path__[:] = self.namespace_path


def forget_module_code(dependencies: bool) -> None:
    """Drop the module code (and its dependencies) from sys.modules, empty the callback lists."""
    for name in module_code_names(dependencies):
        del sys.modules[name]
        _set_on_parent(name, None)
    for name in ("on_started", "on_reload", "on_terminated"):
        getattr(SystemCallbacks, name)._callbacks.clear()
    SystemEvents._handlers.clear()
    set_script_handlers(None)
    # The new code declares its worker resources again (add_pool in on_initialize).
    resources._declared.clear()
    importlib.invalidate_caches()


def _set_on_parent(name: str, module: ModuleType | None) -> None:
    """`import a.b` also binds `b` on package `a`: keep that binding in step with sys.modules."""
    parent_name, _, child = name.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    if parent is None:
        return
    if module is not None:
        setattr(parent, child, module)
    elif getattr(parent, child, None) is not None:
        delattr(parent, child)


def import_module_code(modules_dir: Path | None, server_script: Path | None, insecure: bool,
                       dependencies: bool = False) -> list[str]:
    """Forget the module code and import it again from disk; the loader's errors propagate."""
    forget_module_code(dependencies)
    with no_bytecode_cache(), running_module_code():
        return loader.load_all(modules_dir, server_script, insecure)


@contextlib.contextmanager
def no_bytecode_cache() -> Iterator[None]:
    """Compile what is imported meanwhile from its source, ignoring `__pycache__`.

    A `.pyc` is trusted when the source's mtime (whole seconds) and size
    match: a file edited within the second of its last import, to the same
    size, would come back as the old code.
    """
    saved = sys.pycache_prefix, sys.dont_write_bytecode
    empty = tempfile.mkdtemp(prefix="oversipd-nopyc-")
    sys.pycache_prefix, sys.dont_write_bytecode = empty, True
    try:
        yield
    finally:
        sys.pycache_prefix, sys.dont_write_bytecode = saved
        os.rmdir(empty)


# --- the throw-away check ---------------------------------------------------------------------

def load_failure_line(error: BaseException, what: str = "module code") -> str:
    """One line naming the file (and line) and the error, for the log; `what` ran when it was raised."""
    if isinstance(error, ConfigError):
        return error.one_line()
    if isinstance(error, HaltServer):
        return f"Launcher.fatal was called while importing: {error.reason}"
    what, cause = (error.what, error.error) if isinstance(error, ModuleLoadError) else (what, error)
    return f"{what}: {_where(cause)}{type(cause).__name__}: {_message(cause)}"


def _where(error: BaseException) -> str:
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}, line {error.lineno}: "
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    return f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""


def _message(error: BaseException) -> str:
    text = error.msg if isinstance(error, SyntaxError) and error.msg else str(error)
    return " ".join(text.split())  # one line, whatever the module put in its message


def start_check(modules_dir: Path | None, server_script: Path | None, insecure: bool, dependencies: bool,
                close_fds: list[int]) -> tuple[int, int]:
    """Fork a child that imports the module code afresh and reports; return (pid, read end)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _check_child(modules_dir, server_script, insecure, dependencies, close_fds, write_end)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return pid, read_end


def _check_child(modules_dir: Path | None, server_script: Path | None, insecure: bool, dependencies: bool,
                 close_fds: list[int], result_fd: int) -> NoReturn:
    outcome = "check child failed"
    try:
        from .forking import close_inherited, reset_signals_after_fork

        reset_signals_after_fork()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # The master's ends of the control channels: a worker must see EOF
        # when the master dies, even while this child still imports.
        close_inherited(close_fds)
        process.set_title(CHECK_TITLE)
        import_module_code(modules_dir, server_script, insecure, dependencies)
        outcome = CHECK_OK
    except BaseException as error:  # the check reports; nothing may unwind into the master's frames
        outcome = load_failure_line(error)
    finally:
        try:
            os.write(result_fd, outcome.encode(errors="replace")[:4000])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)
