"""Importing the server script and the drop-in modules, refusing unsafe files."""

from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import sys
from pathlib import Path

from . import modules as modules_namespace
from .errors import ConfigError, HaltServer

SERVER_SCRIPT_MODULE = "oversipd_server"


class ModuleLoadError(Exception):
    """A module (or the server script) raised while being imported."""

    def __init__(self, what: str, error: BaseException) -> None:
        self.what = what
        self.error = error
        super().__init__(f"{what} failed to import: {error!r}")


def drop_in_names(modules_dir: Path) -> list[str]:
    """NAME.py files and NAME/__init__.py packages, sorted; '.' and '_' names skipped."""
    names = []
    for entry in sorted(os.listdir(modules_dir)):
        if entry.startswith((".", "_")):
            continue
        path = modules_dir / entry
        if entry.endswith(".py") and path.is_file():
            names.append(entry[:-3])
        elif path.is_dir() and (path / "__init__.py").is_file():
            names.append(entry)
    return [name for name in names if name.isidentifier()]


def check_modes(modules_dir: Path, names: list[str]) -> None:
    """Refuse a modules directory or module file writable by group or others (StrictModes)."""
    paths = [modules_dir]
    for name in names:
        package = modules_dir / name
        if package.is_dir():
            paths += [package, *sorted(package.rglob("*.py"))]
        else:
            paths.append(modules_dir / f"{name}.py")
    for path in paths:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(str(path), None,
                              f"writable by group or others (mode {stat.S_IMODE(mode):04o}); "
                              "refused (use --insecure-modules to allow it)")


def add_drop_in_dir(modules_dir: Path) -> None:
    # First on the path: a file the operator dropped in wins over an
    # installed distribution of the same name.
    if str(modules_dir) not in modules_namespace.__path__:
        modules_namespace.__path__.insert(0, str(modules_dir))


def import_server_script(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(SERVER_SCRIPT_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[SERVER_SCRIPT_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except HaltServer:
        raise  # Launcher.fatal at import time: already logged
    except BaseException as error:
        sys.modules.pop(SERVER_SCRIPT_MODULE, None)
        raise ModuleLoadError(f"server script {path}", error) from error


def import_drop_ins(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(f"{modules_namespace.__name__}.{name}")
        except (HaltServer, ConfigError):
            raise   # ConfigError: the module found a mistake in the configuration (exit status 2)
        except BaseException as error:
            raise ModuleLoadError(f"module {name}", error) from error


def load_all(modules_dir: Path | None, server_script: Path | None, insecure: bool) -> list[str]:
    """Check and import everything, the server script first; return the module names."""
    names = drop_in_names(modules_dir) if modules_dir else []
    if modules_dir and not insecure:
        check_modes(modules_dir, names)
    if modules_dir:
        add_drop_in_dir(modules_dir)
    if server_script:
        import_server_script(server_script)
    import_drop_ins(names)
    return names
