"""Dropping a worker to `core.user` / `core.group` (the nginx/gunicorn model)."""

from __future__ import annotations

import grp
import os
import pwd

from .errors import ConfigError
from .settings import Settings


def check_identity(settings: Settings) -> None:
    """An unknown user or group is a configuration error."""
    core = settings.core
    if core.user:
        try:
            pwd.getpwnam(core.user)
        except KeyError:
            raise ConfigError(str(settings.path), "core.user", f"no such user {core.user!r}") from None
    if core.group:
        try:
            grp.getgrnam(core.group)
        except KeyError:
            raise ConfigError(str(settings.path), "core.group", f"no such group {core.group!r}") from None


def drop(user: str, group: str) -> None:
    """Become `user` (with its supplementary groups) and `group`; no-op when both are empty."""
    if not user and not group:
        return
    entry = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else (entry.pw_gid if entry else os.getgid())
    if entry is not None:
        os.setgroups(os.getgrouplist(entry.pw_name, gid))
    else:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    if entry is not None:
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
        os.environ["HOME"] = entry.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name
