"""The composition root: one running Daemon (listeners -> hub -> engine -> enforcer, journal)
on one asyncio loop, built from the config, started, stopped."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from bansink.actions.backend import BanBackend
from bansink.actions.nftables import NftablesSet
from bansink.engine.addresses import NetworkSet, parse_address
from bansink.receiver.descriptors import descriptors_in_use

from .bans import BanBook
from .config import Config, ConfigError
from .control import ControlError, ControlServer
from .enforcer import Enforcer
from .hub import Hub
from .jails import build_pipeline, jails_and_sources, layout_of, protections_of
from .listeners import Listener, ListenError, ListenerSet, local_ports
from .logs import Throttle
from .metrics import Metrics
from .notify import Notifier, page_link
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


def running_part(running: Config, new: Config) -> Config:
    """`running` with what a reload applies taken from `new`: all of `[receiver]` (listeners
    opened and closed, TLS files read again, senders, caps, sizes, timeouts, loopback_users),
    `[engine]` (trusted proxies, ignoreip, max_tracked, filter_paths), `[jail]` and
    `[jails.NAME]` (filter files are read again, each jail's set pair and ports follow),
    `nftables.ports` and `[ratelimit.NAME]`. Everything else (the journal, the nftables
    table's names and commit_interval, the control socket, logging) keeps its running value
    until a restart."""
    return running.model_copy(update={
        "receiver": new.receiver,
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


Guard = tuple[tuple[tuple[str, int], ...], tuple[int, ...] | None]
"""The local-senders guard (actions/nftables.py): the (protocol, port) pairs it covers and the
uids that may send to them over loopback; ((), None) when it is off."""


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
                unwritten=self._unwritten, patience=jc.unacknowledged_interval)
        self.book = BanBook(self.pipeline, self.enforcer, self.journal,
                            findtime=self._findtime, history=jc.history)
        self.control: ControlServer | None = None
        self.hub: Hub | None = None
        self._listeners: ListenerSet | None = None
        self.notifier: Notifier | None = None
        if config.notify.enabled:
            self.notifier = Notifier.from_config(config.notify, link=page_link(config))
        self.metrics = Metrics(self)
        self._stopping = asyncio.Event()
        self._throttle = Throttle(60.0)
        self._reload_lock = asyncio.Lock()  # reloads run one at a time, in the order asked
        self._reloads: set[asyncio.Task[bool]] = set()

    @property
    def listeners(self) -> list[Listener]:
        """The running listeners (not those a reload removed while their connections end)."""
        return list(self._listeners) if self._listeners is not None else []

    def _findtime(self, jail: str) -> float:
        found = self.pipeline.jail(jail)
        return found.settings.findtime if found is not None else self.config.longest_findtime

    def _unwritten(self, row: JournalRow, session: int) -> None:
        if self.hub is not None:
            self.hub.unwritten(row, session)

    async def start(self) -> None:
        config = self.config
        self.enforcer.backend.configure(layout_of(config))
        # Per-message garbage is acyclic and freed by reference counting; the cyclic collector
        # mostly re-scans long-lived state (config, tracked addresses, running bans). Collecting
        # the young generation less often measured +19 % RELP msg/s, and from here on it makes
        # the restore of 100,000 bans a third faster (1.35 s against 2.0 s, in-process).
        gc.set_threshold(100_000, 50, 100)
        await self.enforcer.setup()
        hub = self.hub = Hub(self.pipeline, self.book, self.journal, self.guard)
        if self.journal is not None:
            # on the commit thread while the journal opens, before the restore's commits
            survey = asyncio.ensure_future(self.enforcer.run_blocking(self.enforcer.backend.survey))
            for event, fields in await self.journal.open():
                log.error(event, **fields)
            await restore_bans(self.book, self.journal, findtime=config.longest_findtime)
            await replay_journal(self.journal, hub, findtime=config.longest_findtime,
                                 relp_dedupe=config.journal.relp_dedupe)
            try:
                await survey
            except Exception as exc:  # the restored bans were written as usual
                log.warning("nft_survey_failed", error=str(exc))
            await remove_strays(self.book)
        # from here on, bans are new: counted and told (not those restored or replayed above)
        self.metrics.observe_bans()
        await self.metrics.start()
        if self.notifier is not None:
            self.book.on_ban.append(self.notifier.on_ban)
            await self.notifier.start()
        if config.control.socket or config.web.listen is not None:
            page = WebUI(self.book, self.journal, config.web, stats=self.stats,
                         settings=lambda: self.config,
                         store=Path(config.journal.path) if self.journal is not None else None)
            try:
                self.control = ControlServer(
                    self.book, self.journal,
                    Path(config.control.socket) if config.control.socket else None,
                    config.control.group, page=page, metrics=self.metrics)
                await self.control.start()
            except ControlError as exc:
                raise ListenError(str(exc)) from None
        self._listeners = ListenerSet(hub, self._admit)
        await self._listeners.start(config)
        gc.freeze()  # what start-up made is never scanned again
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

    async def reload(self, new: Config) -> list[str]:
        """Apply a new config while running (running_part says what follows it). Everything
        that can fail is done first, before anything changes: the jails' filters are loaded,
        the TLS files read, and the listen addresses added are bound; a failure raises
        ConfigError, ValueError or ListenError naming the key, and the running config stays
        whole. Then at once: each jail keeps its tracked failures, the senders' check follows
        (connections of a sender no longer listed are closed), listeners kept take the new
        settings, listeners removed stop accepting and their connections end well. Returns the
        changed keys that need a restart; they keep their running values (`self.config` is
        always what runs)."""
        async with self._reload_lock:
            if self._listeners is None or self._stopping.is_set():
                raise ValueError("not running")
            running = running_part(self.config, new)
            findtime = running.longest_findtime
            if self.journal is not None and findtime > running.journal.retention:
                raise ValueError(f"findtime ({findtime:g}s) may not exceed the running "
                                 f"journal.retention ({running.journal.retention:g}s)")
            jails, sources = jails_and_sources(running)
            change = self._listeners.prepare(running)
            before = self._guard()  # the local-senders guard covers an added port before
            widened = before is not None and self._set_guard(  # it is bound
                self._guard_for(running, also=before[0]))
            if widened:
                await self.enforcer.configure(layout_of(self.config))
            try:
                await self._listeners.open(change)
            except ListenError:
                if widened:
                    assert before is not None
                    self._set_guard(before)
                    await self.enforcer.configure(layout_of(self.config))
                raise
            # nothing below fails
            self.pipeline.reconfigure(jails, protections_of(running), sources=sources)
            old, self.config = self.config, running
            if self.journal is not None:
                self.journal.salvage_horizon = max(findtime, running.journal.relp_dedupe)
            self._senders = NetworkSet(running.receiver.senders)
            self._listeners.commit(change)
            closed = self._listeners.readmit()
            guard = before is not None and self._set_guard(self._guard_for(running))
            if guard or widened or layout_of(running) != layout_of(old):
                await self.enforcer.configure(layout_of(running))
            applied = changed_keys(old, running)
            restart = changed_keys(running, new)
            log.info("reloaded", applied=applied, needs_restart=restart,
                     connections_closed=closed)
            return restart

    def _guard(self) -> Guard | None:
        """The local-senders guard's (ports, uids) as the backend has them; None without
        nftables (nothing to guard)."""
        backend = self.enforcer.backend
        if not isinstance(backend, NftablesSet):
            return None
        return backend.local_ports, backend.local_uids

    @staticmethod
    def _guard_for(config: Config, also: Sequence[tuple[str, int]] = ()) -> Guard:
        """The guard `config` asks for (its listening ports, receiver.loopback_users; off
        without users, as cli.nftables_backend builds it), covering the ports `also`."""
        uids = tuple(sorted(set(config.receiver.loopback_uids)))
        if not uids:
            return (), None
        return tuple(sorted({*local_ports(config), *also})), uids

    def _set_guard(self, guard: Guard) -> bool:
        """Give the backend that guard; True when it changed (its setup() applies it)."""
        backend = self.enforcer.backend
        assert isinstance(backend, NftablesSet)
        if (backend.local_ports, backend.local_uids) == guard:
            return False
        backend.local_ports, backend.local_uids = guard
        return True

    def _reload_on_signal(self) -> None:
        """SIGHUP: a reload in a task of its own (the signal handler cannot wait)."""
        task = asyncio.get_running_loop().create_task(self.reload_from_file())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_from_file(self) -> bool:
        """Read the config file again and reload; a refusal is logged (`reload_failed`, the
        key named) and the running config stays. True when it was applied."""
        if self._reread is None:
            log.warning("reload_refused", reason="no config file to read again")
            return False
        if self._stopping.is_set():
            return False
        try:
            await self.reload(self._reread())
        except (ConfigError, ValueError, ListenError) as exc:
            log.error("reload_failed", error=str(exc), hint="the running config stays")
            return False
        return True

    async def run(self) -> None:
        """Start, keep house until SIGTERM/SIGINT (or stop()), then close."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("stats", **self.stats()))
        try:
            await self.start()
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)  # once running
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
        async with self._reload_lock:  # a reload under way ends first; later ones refuse
            if self._listeners is not None:
                await self._listeners.stop()
        await self.enforcer.close()
        await self.metrics.close()
        if self.notifier is not None:
            await self.notifier.close()
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
