"""What the module code looks like on disk, so a reload can tell whether it changed (SPEC §5).

A fingerprint is the content (SHA-256) of every file the master imported
module code from: the server script, each drop-in (every `.py` of a
package), and each installed `oversipd.modules.*` module, plus the
installed version of oversipd itself.  Content, not mtime: an editor that
keeps the mtime, or a `pip install` of the same version with new files,
still counts as a change.  Taking one costs a read of those files (a few
hundred µs for the example modules), so an unchanged HUP stays fast.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import loader
from . import modules as modules_namespace

import oversipd

# How the installed oversipd's metadata is found without importlib.metadata,
# whose import (~10 ms) would weigh on the start and on the first reload.
CORE_DIST_INFO = ("oversipd-", ".dist-info")
VERSION_FIELD = "Version: "


@dataclass(frozen=True)
class Fingerprint:
    files: dict[str, str] = field(default_factory=dict)   # path -> sha256 of the content
    drop_ins: dict[str, str] = field(default_factory=dict)  # module name -> its path
    core_version: str | None = None

    def code_differs(self, other: "Fingerprint") -> bool:
        """True when `other` would import different module code than this one."""
        return self.files != other.files or self.drop_ins != other.drop_ins


@dataclass(frozen=True)
class CodeChanges:
    added: list[str]     # drop-in module names
    removed: list[str]
    edited: list[str]    # paths whose content changed

    def describe(self) -> str:
        parts = [f"added {', '.join(self.added)}" if self.added else "",
                 f"removed {', '.join(self.removed)}" if self.removed else "",
                 f"edited {', '.join(self.edited)}" if self.edited else ""]
        return "; ".join(p for p in parts if p) or "no visible change"


def changes(old: Fingerprint, new: Fingerprint) -> CodeChanges:
    added = sorted(set(new.drop_ins) - set(old.drop_ins))
    removed = sorted(set(old.drop_ins) - set(new.drop_ins))
    new_paths = {new.drop_ins[name] for name in added}
    edited = sorted(path for path, digest in new.files.items()
                    if path not in new_paths and old.files.get(path, digest) != digest)
    return CodeChanges(added, removed, edited)


def take(modules_dir: Path | None, server_script: Path | None, installed: bool = True) -> Fingerprint:
    """Read the code the master would import now; `installed=False`: the running core's version instead."""
    files: dict[str, str] = {}
    drop_ins: dict[str, str] = {}
    if server_script is not None:
        _add(files, server_script)
    if modules_dir is not None:
        try:
            names = loader.drop_in_names(modules_dir)
        except OSError:
            names = []  # the directory is gone: every drop-in was removed
        for name in names:
            package = modules_dir / name
            if package.is_dir():
                drop_ins[name] = str(package)
                for path in sorted(package.rglob("*.py")):
                    _add(files, path)
            else:
                path = modules_dir / f"{name}.py"
                drop_ins[name] = str(path)
                _add(files, path)
    for path in installed_module_files(modules_dir):
        _add(files, path)
    return Fingerprint(files, drop_ins, installed_core_version() if installed else oversipd.__version__)


def installed_module_files(modules_dir: Path | None) -> list[Path]:
    """Source files of the imported `oversipd.modules.*` that come from installed distributions."""
    prefix = modules_namespace.__name__ + "."
    drop_in_root = str(modules_dir) if modules_dir is not None else None
    paths = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not name.startswith(prefix) or not origin or not origin.endswith(".py"):
            continue
        if drop_in_root is not None and origin.startswith(drop_in_root + "/"):
            continue
        paths.append(Path(origin))
    return sorted(paths)


def installed_core_version() -> str | None:
    """The version of oversipd installed now (it may differ from the one running): its dist-info's METADATA."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(CORE_DIST_INFO[0]) and name.endswith(CORE_DIST_INFO[1]):
                return _metadata_version(Path(entry or ".", name, "METADATA"))
    return None


def _metadata_version(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as metadata:
            for line in metadata:
                if line.startswith(VERSION_FIELD):
                    return line[len(VERSION_FIELD):].strip()
                if not line.strip():
                    return None  # the headers ended
    except OSError:
        pass
    return None


def _add(files: dict[str, str], path: Path) -> None:
    try:
        files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        files[str(path)] = "unreadable"  # a later read may succeed: that is a change
