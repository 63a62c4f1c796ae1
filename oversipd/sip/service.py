"""SIP in the daemon's life: set up in the master before the fork, started in each worker.

The master side binds the per-slot UDP sockets and creates the counters
mapping; the worker side starts the listeners after the on_started
callbacks (a request never reaches a handler whose modules are not ready)
and stops them first when the worker stops.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from .. import kept, listeners
from ..logger import Logger
from . import auth, registrar
from .proxy import engine as proxy, uac
from .transport import sockets
from .core.sipcore import SipCore   # imported in the master: a worker's start pays no import
from .counters import CLIENT_TX, SERVER_TX, Counters, counters_path
from .transport.flows import FlowTable
from .transport.listeners import TcpListener, UdpListener

if TYPE_CHECKING:
    from ..settings import Settings
    from .settings import SipSettings

_log = Logger("SIP")
_counters: Counters | None = None
WILDCARDS = ("0.0.0.0", "::")
GAUGE_INTERVAL = 0.5   # seconds between two writes of the transaction gauges (`oversipd status`)
# A listener bound to 0.0.0.0 or [::] is reached through every address of
# the machine: destination_myself() takes those (read once, in the master).
_interface_addresses: dict[str, tuple[str, ...]] = {}


# --- in the master ---------------------------------------------------------------

def reuseport_names(settings: "Settings") -> set[str]:
    """The [listen.*] sections to bind with SO_REUSEPORT (UDP and TCP SIP listeners)."""
    return sockets.per_slot_listeners(settings.sip, settings.listen)


def prepare_master(settings: "Settings") -> None:
    """After the [listen.*] sockets are bound, before the fork."""
    if settings.sip is None:
        return
    sockets.open_groups(settings.sip, settings.listen, listeners.master_sockets())
    prepare_master_state(settings)


def prepare_master_state(settings: "Settings") -> None:
    """What the master keeps besides its sockets: also made anew after an exec (the sockets are handed over)."""
    global _counters
    assert settings.sip is not None
    proxy.configure(settings.proxies, settings.dns)   # a server script may make its Proxy at import
    configure_services(settings)   # before the fork: a PostgreSQL store declares its per-worker pool
    if any(scheme in ("tls", "ws", "wss") for scheme in settings.sip.schemes):
        # Imported before the fork (a worker may have dropped privileges), and
        # only by configurations that use them: websockets costs start-up time.
        from .transport import tls, websocket  # noqa: F401
    if any(settings.listen[name].host in WILDCARDS for name in settings.sip.listen):
        _interface_addresses.update(_machine_addresses())
    path = counters_path(settings.core.pid_file)
    try:
        _counters = Counters(path)
    except OSError as error:
        _log.log_system_warn(f"cannot create {path} ({error.strerror or error}): "
                             "the SIP counters stay in memory, and `oversipd status` cannot show them")
        _counters = Counters(None)


def configure_services(settings: "Settings") -> None:
    """[registrar] and [auth] (SIP.md §14): what registrar.save() and auth.authenticate() use."""
    registrar.configure(settings.registrar)
    auth.configure(settings.auth)


def close_master() -> None:
    global _counters
    sockets.close_groups()
    if _counters is not None:
        _counters.remove()
        _counters = None


def warn_if_changed(old: "SipSettings | None", new: "SipSettings | None", log: Logger) -> None:
    """A reload keeps the SIP listeners it has; the other [sip] keys apply at once."""
    if (old is None) != (new is None) or (old is not None and new is not None and old.listen != new.listen):
        log.log_system_warn("[sip] listeners changed (sip.listen, or [sip] added or removed): "
                            "a restart is needed; keeping the current ones")


# --- in a worker --------------------------------------------------------------------

class WorkerSip:
    """The SIP listeners and core of one worker."""

    def __init__(self, settings: "Settings", slot_id: int, loop: asyncio.AbstractEventLoop,
                 generation: int = 1) -> None:
        self.settings = settings
        self.slot_id = slot_id
        self.generation = generation
        self.loop = loop
        self.core: SipCore | None = None
        self.listeners: list = []
        self.tcp_listeners: dict[str, TcpListener] = {}
        self.gauge_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        sip = self.settings.sip
        assert sip is not None and _counters is not None
        sockets.close_other_slots(self.slot_id)
        mine = sockets.slot_sockets(self.slot_id)
        local = [_local_address(name, mine) for name in sip.listen]
        local += [(host, port) for wildcard, port in local if wildcard in WILDCARDS
                  for host in _interface_addresses.get(wildcard, ())]
        self.core = core = SipCore(sip, local, _counters.row(self.slot_id), self.loop)
        by_transport: dict[str, tuple[str, int]] = {}
        udp_listeners = {}
        flows = FlowTable(self.slot_id)
        for name, address in zip(sip.listen, local):
            sock = mine.get(name) or listeners.listen_socket(name)
            if sock.type == socket.SOCK_DGRAM:
                listener = udp_listeners[name] = UdpListener(name, sock, core, self.loop)
                self.listeners.append(listener)
                by_transport.setdefault("udp", address)
            else:
                scheme = self.settings.listen[name].scheme
                stream = self.tcp_listeners[name] = self.stream_listener(name, scheme, sock, flows)
                self.listeners.append(stream)
                by_transport.setdefault(scheme, address)
        proxy.configure(self.settings.proxies, self.settings.dns)
        configure_services(self.settings)   # a worker respawned after a reload runs on the settings it got
        core.proxy = proxy.ProxyEngine(core, self.slot_id, udp_listeners, by_transport, self.loop, flows,
                                       self.generation, self.settings.core.workers)
        # The previous worker's connections first, then new ones and datagrams:
        # a request read while they were being adopted found its client's flow
        # missing (430), where a moment later it was there.
        await self.adopt_flows()
        core.proxy.start_relay()
        uac.serve(core.proxy)
        for stream in self.tcp_listeners.values():
            await stream.start()
        for listener in udp_listeners.values():
            listener.start_reading()
        self.count_transactions()

    def count_transactions(self) -> None:
        """Write the transactions held now into the slot's gauges, and again in GAUGE_INTERVAL.

        Sampled rather than counted at each change: a transaction ends in
        several places (timers, responses, the proxy's branches), a sample
        has one.
        """
        core = self.core
        if core is None:
            return
        core.counts[SERVER_TX] = len(core.table)
        core.counts[CLIENT_TX] = len(core.proxy.clients) if core.proxy is not None else 0
        self.gauge_timer = self.loop.call_later(GAUGE_INTERVAL, self.count_transactions)

    def stream_listener(self, name: str, scheme: str, sock: socket.socket, flows: FlowTable) -> TcpListener:
        """A tcp, tls, ws or wss listener on `sock`: the same accepting, another connection (SIP.md §12)."""
        assert self.core is not None and self.settings.sip is not None
        if scheme == "tcp":
            return TcpListener(name, sock, self.core, self.loop, flows)
        from .transport import tls, websocket   # the ssl and websockets imports only where they serve
        context = tls.server_context(self.settings.sip.tls) if scheme in ("tls", "wss") else None
        connection = tls.TlsConnection if scheme == "tls" else websocket.connection_class(scheme)
        return TcpListener(name, sock, self.core, self.loop, flows, connection, context)

    async def adopt_flows(self) -> None:
        """The connections this slot's dead worker held: read on here, the peers saw nothing."""
        adopted = 0
        for key, sock in kept.adopt().items():
            adopted += await self.adopt(key, sock, b"", "of this slot's previous worker")
        if adopted:
            _log.log_system_notice(f"adopted {adopted} TCP connection(s) of this slot's previous worker")

    async def adopt_handed_over(self, key: tuple[str, int], unread: bytes, sock: socket.socket) -> None:
        """A connection the retiring worker of our slot handed over: read on here, from where it stopped."""
        await self.adopt(key, sock, unread, "handed over by the previous generation")

    async def adopt(self, key: tuple[str, int], sock: socket.socket, unread: bytes, whose: str) -> bool:
        """Read on a kept connection (oversipd.kept) on the listener that accepted it; False if it is lost."""
        name, flow_id = key
        listener = self.tcp_listeners.get(name)
        if listener is None:
            sock.close()
            return False
        try:
            await listener.adopt(sock, flow_id, unread)
        except OSError as error:
            _log.log_system_info(f"a TCP connection {whose} is lost: {error}")
            sock.close()
            return False
        return True

    def apply_settings(self, settings: "Settings") -> None:
        if self.core is not None and settings.sip is not None and self.settings.sip is not None \
                and settings.sip.listen == self.settings.sip.listen:
            self.settings = settings
            self.core.apply_settings(settings.sip)
            if self.core.proxy is not None:
                self.core.proxy.slots = settings.core.workers
            proxy.configure(settings.proxies, settings.dns)
            configure_services(settings)
            self.renew_tls(settings.sip)

    def renew_tls(self, sip: "SipSettings") -> None:
        """At a reload, [tls] read anew (the files too): a renewed certificate needs no restart.

        New connections get it; CAs once loaded stay trusted until a restart
        (an ssl context only adds them).
        """
        from .transport import tls
        for listener in self.tcp_listeners.values():
            if listener.ssl_context is not None:
                try:
                    tls.renew_server_context(listener.ssl_context, sip.tls)
                except (OSError, ValueError) as error:   # ssl.SSLError is an OSError; files changed since the check
                    _log.log_system_error(f"[tls] not renewed on {listener.name}, the old one serves on: {error}")
        if self.core is not None and self.core.proxy is not None:
            self.core.proxy.next_hops.tls_context = None   # made anew at the next outgoing connection

    def stop_reading(self) -> None:
        """A newer generation serves: read no new request here.

        The new generation's worker of this slot reads the same UDP sockets and
        accepts on the same TCP sockets, so nothing new is lost; the clients'
        connections accepted here are handed over to it (oversipd.kept).  What
        is not carried over: a retransmission or ACK of a transaction held
        here now reaches the new worker.
        """
        for listener in self.listeners:
            listener.stop_reading()
            if isinstance(listener, TcpListener):
                listener.hand_over()

    async def drain(self, grace: float) -> None:
        """Let the handlers in hand and the proxied requests without a final response finish, for at most `grace` s.

        A call ringing through a retiring worker still connects: the
        callee's 200 reaches this worker over the relay (its branch names
        our generation), and goes upstream from here.
        """
        core = self.core
        if core is None:
            return
        deadline = self.loop.time() + grace
        while (remaining := deadline - self.loop.time()) > 0:
            waits: list[asyncio.Future] = list(core.tasks)
            if core.proxy is not None and not core.proxy.idle.is_set():
                waits.append(self.loop.create_task(core.proxy.idle.wait()))
            if not waits:
                return
            done, not_done = await asyncio.wait(waits, timeout=remaining)
            for waiter in not_done:
                if waiter not in core.tasks:
                    waiter.cancel()

    def close(self) -> None:
        if self.gauge_timer is not None:
            self.gauge_timer.cancel()
            self.gauge_timer = None
        if self.core is not None:   # what this worker held ends with it
            self.core.counts[SERVER_TX] = self.core.counts[CLIENT_TX] = 0
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        self.tcp_listeners = {}
        if self.core is not None:
            if self.core.proxy is not None:
                uac.stop(self.core.proxy)
            self.core.close()


def _local_address(name: str, mine: dict[str, socket.socket]) -> tuple[str, int]:
    sock = mine.get(name) or listeners.master_sockets()[name]
    address = sock.getsockname()
    return address[0], address[1]


def _machine_addresses() -> dict[str, tuple[str, ...]]:
    """Wildcard -> the machine's addresses of that family."""
    import ipaddress

    import psutil

    found: dict[str, set[str]] = {"0.0.0.0": set(), "::": set()}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            wildcard = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}.get(address.family)
            if wildcard is not None:
                found[wildcard].add(str(ipaddress.ip_address(address.address.split("%")[0])))
    return {wildcard: tuple(sorted(hosts)) for wildcard, hosts in found.items()}
