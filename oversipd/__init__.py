"""oversipd: a pre-fork master/worker daemon hosting OverSIP-style modules.

The module API (SPEC §2): SystemCallbacks, SystemEvents, SipEvents (SIP.md §9), Launcher,
Logger, the `modules` namespace (alias `M`), `process`, `config` and
`module_settings`.
"""

from __future__ import annotations

from pkgutil import extend_path
from typing import Any

# `oversipd/modules/` of third-party distributions may live in other sys.path
# entries than this package: let them take part in `oversipd.modules`.
__path__ = extend_path(__path__, __name__)

from . import modules, process  # noqa: E402 (needs the extended __path__)
from .callbacks import SipEvents, SystemCallbacks, SystemEvents, WebSocketEvents
from .launcher import Launcher
from .listeners import listen_socket
from .logger import Logger
from .resources import ResourceError, ResourceNotOpenError, WorkerResource, worker_resource

__version__ = "0.1.0"
__all__ = ["SystemCallbacks", "SystemEvents", "SipEvents", "WebSocketEvents", "Launcher", "Logger", "M", "modules",
           "process", "config", "module_settings", "listen_socket", "worker_resource", "WorkerResource",
           "ResourceError", "ResourceNotOpenError", "__version__"]

M = modules

# The current configuration (an oversipd.settings.Settings), replaced on
# reload.  An attribute, not a submodule: see settings.py.
config: Any = None


def module_settings(name: str) -> dict[str, Any]:
    """The `[modules.NAME]` table as a dict (empty when absent)."""
    return config.module_settings(name) if config is not None else {}
