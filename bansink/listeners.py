"""The listeners `[receiver]` asks for, opened at start and moved by a reload to what the new
config asks for: an address added is opened, one removed stops accepting and its connections
end well (receiver.tcp.StreamListener.retire), one unchanged keeps its socket and connections
and takes the new settings (StreamListener.reconfigure). A reload opens what it adds before
anything else changes, so an address that cannot be bound refuses the whole reload and the
running listeners stay as they were."""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import structlog

from bansink.receiver.descriptors import descriptor_budget
from bansink.receiver.intake import Admit, Intake
from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.tcp import StreamListener, TcpListener
from bansink.receiver.tls import server_context
from bansink.receiver.udp import UdpListener

from .config import Config

log = structlog.get_logger("bansink")

Listener = UdpListener | StreamListener
ListenAt = tuple[str, str, int]
"""(transport, host, port): a listener as the config names it, `receiver.TRANSPORT`'s entry."""

TRANSPORTS = ("udp", "tcp", "relp", "tls", "relp_tls")
_STREAMS: dict[str, tuple[type[StreamListener], bool]] = {
    "tcp": (TcpListener, False), "relp": (RelpListener, False),
    "tls": (TcpListener, True), "relp_tls": (RelpListener, True)}
"""stream transport -> (its listener class, whether it speaks TLS)"""

REBIND_WAIT = 0.5
"""How long an address a removed listener gave up may take to be free (uvloop closes a
listening socket on the loop's next pass, not at once)."""


class ListenError(Exception):
    """A configured listen address cannot be bound (in use, not on this host, no privilege)."""


def listen_addresses(config: Config) -> list[ListenAt]:
    """Every listener the config asks for, in the config's order."""
    rc = config.receiver
    return [(transport, host, port) for transport in TRANSPORTS
            for host, port in getattr(rc, transport)]


def local_ports(config: Config) -> list[tuple[str, int]]:
    """("udp" | "tcp", port) of every listener: the ports the local-senders guard covers."""
    return sorted({("udp" if transport == "udp" else "tcp", port)
                   for transport, _, port in listen_addresses(config)})


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS listeners' context, the files read now (a reload reads a renewed certificate);
    None without TLS listeners."""
    rc = config.receiver
    if not (rc.tls or rc.relp_tls):
        return None
    ts = rc.tls_settings
    try:
        return server_context(ts.certificate, ts.key, ts.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"receiver.tls_settings: cannot load the certificate, key or CA: "
                          f"{exc}") from None


def _where(at: ListenAt) -> str:
    transport, host, port = at
    return f"{transport} [{host}]:{port}" if ":" in host else f"{transport} {host}:{port}"


def _cannot_listen(at: ListenAt, exc: OSError) -> str:
    # the errno's own words: asyncio words them "error while attempting to bind on ..."
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"receiver.{at[0]}: cannot listen on {_where(at)}: {reason}"


def _is_udp(at: ListenAt) -> bool:
    return at[0] == "udp"


@dataclass
class ListenerChange:
    """What a reload does to the listeners, prepared (nothing bound yet)."""

    config: Config
    context: ssl.SSLContext | None
    added: dict[ListenAt, Listener]
    kept: dict[ListenAt, Listener]
    removed: dict[ListenAt, Listener]
    released: list[ListenAt] = field(default_factory=list)
    """Removed listeners that gave up their address early, for an added one on the same port
    (`tcp` becoming `relp` on one address, `0.0.0.0:514` becoming `192.0.2.1:514`)."""


class ListenerSet:
    """The running listeners by ListenAt, and those a reload removed while their connections
    end (`retiring`)."""

    def __init__(self, intake: Intake, admit: Admit) -> None:
        self.intake, self.admit = intake, admit
        self.running: dict[ListenAt, Listener] = {}
        self.retiring: dict[Listener, asyncio.Task[None]] = {}

    def __iter__(self) -> Iterator[Listener]:
        return iter(self.running.values())

    def _build(self, at: ListenAt, config: Config, context: ssl.SSLContext | None) -> Listener:
        rc = config.receiver
        transport, host, port = at
        if transport == "udp":
            return UdpListener(host, port, admit=self.admit, intake=self.intake,
                               max_message_size=rc.max_message_size,
                               receive_buffer=rc.udp_receive_buffer)
        kind = _STREAMS[transport][0]
        return kind(host, port, admit=self.admit, intake=self.intake, transport_name=transport,
                    **_stream_settings(transport, config, context))

    def _check_budget(self, listeners: list[Listener], config: Config) -> None:
        too_many = descriptor_budget(listeners, config.receiver.max_connections)
        if too_many is not None:
            raise ListenError(too_many)

    async def start(self, config: Config) -> None:
        """Open every listener of `config`; ListenError (naming the key) if one cannot be."""
        context = tls_context(config)
        wanted = {at: self._build(at, config, context) for at in listen_addresses(config)}
        self._check_budget(list(wanted.values()), config)
        for at, listener in wanted.items():
            try:
                await listener.start()
            except OSError as exc:
                raise ListenError(_cannot_listen(at, exc)) from None
            self.running[at] = listener
            _log_listening(at, listener)

    # -- a reload -----------------------------------------------------------------------------

    def prepare(self, config: Config) -> ListenerChange:
        """What moving to `config` takes; ListenError if its TLS files cannot be read or its caps
        do not fit the descriptors. Nothing changes yet."""
        context = tls_context(config)
        wanted = listen_addresses(config)
        change = ListenerChange(
            config, context,
            added={at: self._build(at, config, context) for at in wanted
                   if at not in self.running},
            kept={at: self.running[at] for at in wanted if at in self.running},
            removed={at: listener for at, listener in self.running.items()
                     if at not in wanted})
        self._check_budget([*change.kept.values(), *change.added.values()], config)
        return change

    async def open(self, change: ListenerChange) -> None:
        """Bind what `change` adds. If one cannot be bound, close what was opened, give the
        removed listeners back their addresses, and raise ListenError naming its key."""
        opened: list[Listener] = []
        waiting: list[ListenAt] = []
        try:
            for at, listener in change.added.items():
                try:
                    await listener.start()
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or not self._in_the_way(at, change):
                        raise ListenError(_cannot_listen(at, exc)) from None
                    waiting.append(at)
                else:
                    opened.append(listener)
            if waiting:
                for at in change.removed:
                    if any(self._same_port(at, other) for other in waiting):
                        await _release(change.removed[at])
                        change.released.append(at)
                for at in waiting:
                    await _start_when_free(at, change.added[at])
                    opened.append(change.added[at])
        except ListenError:
            for listener in opened:
                await listener.stop()
            for at in change.released:
                listener = change.removed[at]
                try:
                    await listener.start()
                except OSError as exc:  # taken meanwhile by someone else: say so, go on
                    log.error("listener_lost", error=_cannot_listen(at, exc),
                              hint="a restart opens it again once the address is free")
                    del self.running[at]
                    self._retire(listener)
            change.released.clear()
            raise

    @staticmethod
    def _same_port(a: ListenAt, b: ListenAt) -> bool:
        return a[2] == b[2] and _is_udp(a) == _is_udp(b)

    def _in_the_way(self, at: ListenAt, change: ListenerChange) -> bool:
        return any(self._same_port(at, removed) for removed in change.removed)

    def commit(self, change: ListenerChange) -> None:
        """Take `change` (after open()): kept listeners take the new settings, removed ones
        retire, and the running set is what the config names, in its order."""
        rc = change.config.receiver
        for at, listener in change.kept.items():
            if isinstance(listener, UdpListener):
                listener.reconfigure(max_message_size=rc.max_message_size,
                                     receive_buffer=rc.udp_receive_buffer)
            else:
                listener.reconfigure(**_stream_settings(at[0], change.config, change.context))
        for at, listener in change.removed.items():
            connections = (sum(listener.connections.values())
                           if isinstance(listener, StreamListener) else 0)
            log.info("listener_closed", transport=at[0], address=at[1], port=at[2],
                     connections=connections)
            self._retire(listener)
        for at, listener in change.added.items():
            _log_listening(at, listener)
        self.running = {at: change.kept.get(at) or change.added[at]
                        for at in listen_addresses(change.config)}

    def _retire(self, listener: Listener) -> None:
        """Stop accepting now (refused from the moment the reload is done) and let its
        connections end well, in a task of their own."""
        if isinstance(listener, StreamListener):
            listener.stop_accepting()
            ending = listener.retire()
        else:
            ending = listener.stop()
        self.retiring[listener] = asyncio.get_running_loop().create_task(
            self._ended(listener, ending))

    async def _ended(self, listener: Listener, ending: Coroutine[None, None, None]) -> None:
        try:
            await ending
        finally:
            self.retiring.pop(listener, None)

    # -- both -----------------------------------------------------------------------------------

    def readmit(self) -> int:
        """Close the connections of senders no longer allowed (retiring listeners' too)."""
        return sum(listener.readmit() for listener in [*self.running.values(), *self.retiring]
                   if isinstance(listener, StreamListener))

    async def stop(self) -> None:
        for listener in [*self.retiring, *self.running.values()]:
            await listener.stop()
        for task in list(self.retiring.values()):
            await task


class StreamSettings(TypedDict):
    """What a stream listener takes from `[receiver]`, at start and on a reload."""

    max_message_size: int
    max_connections: int
    max_connections_per_sender: int
    idle_timeout: float
    ssl_context: ssl.SSLContext | None
    allowed_names: Sequence[str]


def _stream_settings(transport: str, config: Config,
                     context: ssl.SSLContext | None) -> StreamSettings:
    rc = config.receiver
    tls = _STREAMS[transport][1]
    return {"max_message_size": (rc.relp_max_frame_size if transport.startswith("relp")
                                 else rc.max_message_size),
            "max_connections": rc.max_connections,
            "max_connections_per_sender": rc.max_connections_per_sender,
            "idle_timeout": rc.idle_timeout,
            "ssl_context": context if tls else None,
            "allowed_names": rc.tls_settings.client_names if tls else ()}


async def _release(listener: Listener) -> None:
    if isinstance(listener, StreamListener):
        listener.stop_accepting()  # its connections go on until it retires
    else:
        await listener.stop()


async def _start_when_free(at: ListenAt, listener: Listener) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REBIND_WAIT
    while True:
        try:
            await listener.start()
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or loop.time() > deadline:
                raise ListenError(_cannot_listen(at, exc)) from None
        await asyncio.sleep(0.01)


def _log_listening(at: ListenAt, listener: Listener) -> None:
    host, port = listener.address
    log.info("listening", transport=at[0], address=host, port=port)
