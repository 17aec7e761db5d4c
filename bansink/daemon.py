"""The composition root: one running Daemon (listeners -> hub -> engine -> enforcer, journal)
on one asyncio loop, built from the config, started, stopped."""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from bansink.actions.backend import BanBackend
from bansink.engine.addresses import NetworkSet, parse_address
from bansink.receiver.descriptors import descriptor_budget, descriptors_in_use
from bansink.receiver.intake import Admit, Intake
from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.tcp import StreamListener, TcpListener
from bansink.receiver.tls import server_context
from bansink.receiver.udp import UdpListener

from .bans import BanBook
from .config import Config, ConfigError
from .control import ControlError, ControlServer
from .enforcer import Enforcer
from .hub import Hub
from .jails import build_pipeline, layout_of, reconfigure
from .logs import Throttle
from .replay import replay_journal
from .resends import ResendGuard
from .restore import remove_strays, restore_bans
from .store.journal import Journal, JournalRow
from .store.writer import JournalWriter
from .web.server import WebUI

log = structlog.get_logger("bansink")

STATS_INTERVAL = 60.0
CHECK_INTERVAL = 1.0
"""How often the journal file, the nftables table and the descriptors are checked: faults made
behind bansink's back (a deleted file, a flushed ruleset) are found within this."""


SWITCH_INTERVAL = 0.001
"""The GIL's hand-over interval (CPython's default: 5 ms). The journal writer's thread holds the
GIL in runs while it builds its rows; handing it back sooner keeps the event loop's timers (the
nft commit a ban waits for) on time under a read burst (measured below, README Performance)."""


class ListenError(Exception):
    """A configured listen address cannot be bound (in use, not on this host, no privilege)."""


def running_part(running: Config, new: Config) -> Config:
    """`running` with what a reload applies taken from `new`: the senders, `[engine]` (trusted
    proxies, ignoreip, max_tracked, filter_paths), `[jail]` and `[jails.NAME]` (filter files
    are read again, each jail's set pair and ports follow), `nftables.ports` and
    `[ratelimit.NAME]`. Everything else (listeners, TLS, the journal, the nftables table's
    names, logging) keeps its running value until a restart."""
    return running.model_copy(update={
        "receiver": running.receiver.model_copy(
            update={"senders": new.receiver.senders, "allow_any": new.receiver.allow_any}),
        "engine": new.engine,
        "jail": new.jail,
        "jails": new.jails,
        "nftables": running.nftables.model_copy(update={"ports": new.nftables.ports}),
        "ratelimit": new.ratelimit,
    })


def changed_keys(old: Config, new: Config) -> list[str]:
    """`section.key` for every value that differs (`jails.NAME` for a jail)."""
    before, after = old.model_dump(), new.model_dump()
    return [f"{section}.{key}" for section in after
            for key in dict.fromkeys([*before[section], *after[section]])
            if before[section].get(key) != after[section].get(key)]


Listener = UdpListener | StreamListener


def build_listeners(config: Config, intake: Intake, admit: Admit) -> list[Listener]:
    """Every configured listener, not started; ListenError if the TLS files cannot be used."""
    rc = config.receiver
    context = None
    if rc.tls or rc.relp_tls:
        ts = rc.tls_settings
        try:
            context = server_context(ts.certificate, ts.key, ts.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(f"receiver.tls_settings: cannot load the certificate, key or CA: "
                              f"{exc}") from None

    def stream(kind: type[StreamListener], host: str, port: int, name: str, size: int,
               tls: bool = False) -> StreamListener:
        return kind(host, port, admit=admit, intake=intake, max_message_size=size,
                    max_connections=rc.max_connections,
                    max_connections_per_sender=rc.max_connections_per_sender,
                    idle_timeout=rc.idle_timeout, transport_name=name,
                    ssl_context=context if tls else None,
                    allowed_names=rc.tls_settings.client_names if tls else ())

    tcp, relp = rc.max_message_size, rc.relp_max_frame_size
    return [
        *(UdpListener(host, port, admit=admit, intake=intake, max_message_size=tcp,
                      receive_buffer=rc.udp_receive_buffer) for host, port in rc.udp),
        *(stream(TcpListener, host, port, "tcp", tcp) for host, port in rc.tcp),
        *(stream(RelpListener, host, port, "relp", relp) for host, port in rc.relp),
        *(stream(TcpListener, host, port, "tls", tcp, True) for host, port in rc.tls),
        *(stream(RelpListener, host, port, "relp_tls", relp, True) for host, port in rc.relp_tls),
    ]


class Daemon:
    """bansink running: `Daemon(config, backend)` builds the parts (no I/O), `start()` sets up
    enforcement, opens and replays the journal and starts the listeners, `stop()` asks it to
    end, `run()` does all of it until SIGTERM/SIGINT. Each part keeps its own counters; `stats()`
    reads them in one place."""

    def __init__(self, config: Config, backend: BanBackend,
                 reread: Callable[[], Config] | None = None) -> None:
        """`reread` gives the config anew for a reload (SIGHUP); None: reloads are refused."""
        self.config = config
        self._reread = reread
        self._senders = NetworkSet(config.receiver.senders)
        jc = config.journal
        self.enforcer = Enforcer(backend, config.nftables.commit_interval)
        self.pipeline = build_pipeline(config)
        self.guard = ResendGuard(jc.relp_window, jc.relp_dedupe)
        self.journal: JournalWriter | None = None
        if jc.path:
            self.journal = JournalWriter(
                Journal(Path(jc.path), retention=jc.retention, max_rows=jc.max_rows,
                        history=jc.history),
                jc.commit_interval, salvage_horizon=max(config.longest_findtime, jc.relp_dedupe),
                unwritten=self._unwritten)
        self.book = BanBook(self.pipeline, self.enforcer, self.journal,
                            findtime=self._findtime, history=jc.history)
        self.control: ControlServer | None = None
        self.hub: Hub | None = None
        self.listeners: list[Listener] = []
        self._stopping = asyncio.Event()
        self._throttle = Throttle(60.0)
        self._layout_change: asyncio.Future[None] | None = None

    def _findtime(self, jail: str) -> float:
        found = self.pipeline.jail(jail)
        return found.settings.findtime if found is not None else self.config.longest_findtime

    def _unwritten(self, row: JournalRow, session: int) -> None:
        if self.hub is not None:
            self.hub.unwritten(row, session)

    async def start(self) -> None:
        config = self.config
        self.enforcer.backend.configure(layout_of(config))
        await self.enforcer.setup()
        hub = self.hub = Hub(self.pipeline, self.book, self.journal, self.guard)
        if self.journal is not None:
            for event, fields in await self.journal.open():
                log.error(event, **fields)
            await restore_bans(self.book, self.journal, findtime=config.longest_findtime)
            await replay_journal(self.journal, hub, findtime=config.longest_findtime,
                                 relp_dedupe=config.journal.relp_dedupe)
            await remove_strays(self.book)
        if config.control.socket or config.web.listen is not None:
            page = WebUI(self.book, self.journal, config.web, stats=self.stats,
                         settings=lambda: self.config,
                         store=Path(config.journal.path) if self.journal is not None else None)
            try:
                self.control = ControlServer(
                    self.book, self.journal,
                    Path(config.control.socket) if config.control.socket else None,
                    config.control.group, page=page)
                await self.control.start()
            except ControlError as exc:
                raise ListenError(str(exc)) from None
        self.listeners = build_listeners(config, hub, self._admit)
        too_many = descriptor_budget(self.listeners, config.receiver.max_connections)
        if too_many is not None:
            raise ListenError(too_many)
        for listener in self.listeners:
            transport = listener.transport_name
            try:
                await listener.start()
            except OSError as exc:
                where = f"[{listener.host}]" if ":" in listener.host else listener.host
                raise ListenError(f"cannot listen on {transport} {where}:{listener.port}: "
                                  f"{exc.strerror or exc}") from None
            host, port = listener.address
            log.info("listening", transport=transport, address=host, port=port)
        # Per-message garbage is acyclic and freed by reference counting; the cyclic collector
        # mostly re-scans long-lived state (config, tracked addresses). Freezing what start-up
        # made and collecting the young generation less often measured +19 % RELP msg/s.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        sys.setswitchinterval(SWITCH_INTERVAL)
        log.info("started", senders=config.receiver.senders,
                 jails={jail.settings.name: {"maxretry": jail.settings.maxretry,
                                             "findtime": jail.settings.findtime,
                                             "bantime": jail.settings.bantime}
                        for jail in self.pipeline.jails})

    def _admit(self, address: str) -> str | None:
        """The sender check every listener asks (it follows reloads)."""
        ip = parse_address(address.partition("%")[0])
        return str(ip) if ip is not None and ip in self._senders else None

    def stop(self) -> None:
        self._stopping.set()

    def reload(self, new: Config) -> list[str]:
        """Apply a new config while running: senders (connections of a sender no longer
        listed are closed), protections and jail settings change at once, each jail keeping
        its tracked failures. Returns the changed keys that need a restart to apply; they keep
        their running values (`self.config` is always what runs)."""
        running = running_part(self.config, new)
        findtime = running.longest_findtime
        if self.journal is not None and findtime > running.journal.retention:
            raise ValueError(f"findtime ({findtime:g}s) may not exceed the running "
                             f"journal.retention ({running.journal.retention:g}s)")
        reconfigure(self.pipeline, running)
        layout = layout_of(running)
        if layout != layout_of(self.config):
            self._layout_change = asyncio.ensure_future(self.enforcer.configure(layout))
        if self.journal is not None:
            self.journal.salvage_horizon = max(findtime, running.journal.relp_dedupe)
        applied = changed_keys(self.config, running)
        self.config = running
        self._senders = NetworkSet(running.receiver.senders)
        closed = sum(listener.readmit() for listener in self.listeners
                     if isinstance(listener, StreamListener))
        restart = changed_keys(running, new)
        log.info("reloaded", applied=applied, needs_restart=restart, connections_closed=closed)
        return restart

    def _reload_from_file(self) -> None:
        if self._reread is None:
            log.warning("reload_refused", reason="no config file to read again")
            return
        try:
            self.reload(self._reread())
        except (ConfigError, ValueError) as exc:
            log.error("reload_failed", error=str(exc), hint="the running config stays")

    async def run(self) -> None:
        """Start, keep house until SIGTERM/SIGINT (or stop()), then close."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("stats", **self.stats()))
        try:
            await self.start()
            loop.add_signal_handler(signal.SIGHUP, self._reload_from_file)  # once running
            await self._keep_house()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.close()

    async def _keep_house(self) -> None:
        """One timer: every CHECK_INTERVAL the fault checks; the engine's expiry when its next
        deadline has come; the journal's pruning every min(findtime/4, 30 s); stats a minute."""
        loop = asyncio.get_running_loop()
        last_prune = last_stats = loop.time()
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=CHECK_INTERVAL)
            except TimeoutError:
                pass
            now = loop.time()
            deadline = self.pipeline.next_deadline()
            if deadline is not None and deadline <= now:
                self.pipeline.expire(now)
            self.guard.expire(now)
            self.book.expire_allowed()
            await self.enforcer.verify()
            self._check_descriptors(now)
            prune = now - last_prune >= min(self.config.longest_findtime / 4, 30.0)
            if prune:
                last_prune = now
                self.enforcer.forget_ended(now)
                self.book.forget_history()
            if self.journal is not None:
                await self.journal.housekeeping(time.time(), prune=prune)
            if now - last_stats >= STATS_INTERVAL:
                last_stats = now
                log.info("stats", **self.stats())

    def _check_descriptors(self, now: float) -> None:
        in_use, limit = descriptors_in_use()
        if in_use >= limit * 0.9 and self._throttle.allow(("descriptors",), now) is not None:
            log.error("descriptors_exhausted", in_use=in_use, limit=limit,
                      hint="new connections fail on every listener; raise LimitNOFILE or lower "
                           "receiver.max_connections")

    async def close(self) -> None:
        if self.control is not None:
            await self.control.stop()
        for listener in self.listeners:
            await listener.stop()
        await self.enforcer.close()
        if self.journal is not None:
            await self.journal.close()
        log.info("stopped", **self.stats())

    def stats(self) -> dict[str, object]:
        hub = self.hub
        return {
            **(hub.counters() if hub is not None else {}),
            "outcomes": dict(self.pipeline.counts),
            "tracked": self.pipeline.tracked,
            "evicted": self.pipeline.evicted,
            "held_banned": self.pipeline.held,
            "relp_resend_memory": self.guard.remembered,
            **self.enforcer.counters(),
            **(self.journal.counters() if self.journal is not None else {}),
        }


async def serve(config: Config, backend: BanBackend,
                reread: Callable[[], Config] | None = None) -> None:
    """Run a Daemon until SIGTERM/SIGINT; SIGHUP reloads from `reread`."""
    await Daemon(config, backend, reread).run()
