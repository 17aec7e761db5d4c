"""The composition root: listeners -> pipeline -> enforcer, on one asyncio loop."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import signal
import sqlite3
import ssl
import time
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import structlog

from bansink.actions.backend import BanBackend, CommitResult
from bansink.engine.addresses import IPAddress, NetworkSet, parse_address
from bansink.engine.events import MalformedEvent
from bansink.engine.jail import BanDecision, JailSettings
from bansink.engine.pipeline import Banned, Counted, Ignored, Protections, SecurityPipeline
from bansink.receiver.descriptors import descriptor_budget, descriptors_in_use
from bansink.receiver.intake import Admit, Dropped
from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.syslog import MalformedSyslog, SyslogMessage
from bansink.receiver.tcp import TcpListener
from bansink.receiver.tls import server_context
from bansink.receiver.udp import UdpListener

from .batching import TickBatcher
from .config import Config
from .durability import Done, JournalWriter, ResendGuard, digest_of, journal_row, replay
from .journal import Journal, is_damage

log = structlog.get_logger("bansink")

STATS_INTERVAL = 60.0
HOUSEKEEPING_TICK = 1.0
"""How often the journal file (and the nftables table) are checked to be still in place."""


class ListenError(Exception):
    """A configured listen address cannot be bound (in use, not on this host, no privilege)."""


class Throttle:
    """At most one log line per key per `interval` seconds; counts what it held back."""

    def __init__(self, interval: float = 10.0, max_keys: int = 10_000) -> None:
        self.interval, self.max_keys = interval, max_keys
        self._last: dict[tuple[str, ...], float] = {}
        self._held: Counter[tuple[str, ...]] = Counter()

    def allow(self, key: tuple[str, ...], now: float) -> int | None:
        """None to stay quiet; else how many were held back since the last line."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] += 1
            return None
        if len(self._last) >= self.max_keys:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


class Enforcer:
    """Batches ban decisions and commits them to the backend, one transaction per tick.

    It remembers the bans it enforced until they end, so that a table flushed or deleted behind
    bansink's back (`nft flush ruleset`, a firewall reload) is rebuilt with every running ban
    and its remaining time: found by `verify()` (the daemon calls it every second) or by a
    commit that had to re-create the table.
    """

    def __init__(self, backend: BanBackend, interval: float) -> None:
        self.backend = backend
        self._batcher: TickBatcher[BanDecision, CommitResult] = TickBatcher(
            interval, self._commit, self._report, "nft")
        self.bans = 0
        self.errors = 0
        self.rebuilds = 0
        self._running: dict[IPAddress, tuple[float, BanDecision]] = {}
        """address -> (monotonic end, decision) of every ban enforced and not yet over"""
        self._restoring: set[IPAddress] = set()
        self._retry: dict[IPAddress, BanDecision] = {}
        """bans a failed commit left out: tried again at the next verify"""
        self._restore_again = False
        self._throttle = Throttle(60.0)

    async def setup(self) -> None:
        await self._batcher.run_blocking(self.backend.setup)

    def ban(self, decision: BanDecision) -> None:
        self._batcher.put(decision)

    def _commit(self, batch: list[BanDecision]) -> CommitResult:
        for decision in batch:
            self.backend.add(decision)
        return self.backend.commit()

    def _report(self, batch: list[BanDecision], result: CommitResult | Exception) -> None:
        now, wall = asyncio.get_running_loop().time(), time.time()
        if isinstance(result, CommitResult) and result.rebuilt:
            self._rebuild("the table was missing when bans were committed")
        failed: tuple[BanDecision, ...] = ()
        if isinstance(result, Exception) or result.error is not None:
            failed = tuple(batch) if isinstance(result, Exception) else result.bans
            self._failed(failed, result.error if isinstance(result, CommitResult) else
                         repr(result), now)
        lost = {b.ip for b in failed}
        for b in batch:
            if b.ip in lost:
                continue
            self._running[b.ip] = (b.decided_at + b.bantime, b)
            if b.ip in self._restoring:
                self._restoring.discard(b.ip)
                continue
            self.bans += 1
            until = datetime.fromtimestamp(wall + b.bantime, UTC).isoformat(timespec="seconds")
            log.info("ban", ip=str(b.ip), jail=b.jail, count=b.failures, bantime=b.bantime,
                     until=until, latency_ms=round((now - b.decided_at) * 1000, 1))

    def _failed(self, failed: tuple[BanDecision, ...], error: str | None, now: float) -> None:
        """Bans that did not take effect are tried again at the next verify, not dropped."""
        self.errors += 1
        for b in failed:
            if b.ip in self._restoring:  # a running ban being put back: put them all back
                self._restoring.discard(b.ip)
                self._restore_again = True
            else:
                self._retry[b.ip] = b
        held = self._throttle.allow(("ban_failed",), now)
        if held is not None:
            log.error("ban_failed", bans=len(failed), ips=[str(b.ip) for b in failed[:20]],
                      error=error, suppressed=held, hint="retried every second")

    async def verify(self) -> None:
        """Check the backend's table is whole; if it was rebuilt, put the running bans back;
        try again what a failed commit left out."""
        try:
            problem = await self._batcher.run_blocking(self.backend.verify)
        except Exception as exc:  # e.g. nft refused the rebuild: try again next time
            held = self._throttle.allow(("nft_verify_failed",), asyncio.get_running_loop().time())
            if held is not None:
                log.error("nft_verify_failed", error=str(exc), suppressed=held)
            return
        if problem is not None or self._restore_again:
            self._restore_again = False
            self._rebuild(problem)
        if self._retry:
            now = asyncio.get_running_loop().time()
            retry, self._retry = self._retry, {}
            for b in retry.values():
                if b.decided_at + b.bantime - now >= 1:
                    self.ban(b)

    def _rebuild(self, problem: str | None) -> None:
        now = asyncio.get_running_loop().time()
        self.forget_ended(now)
        for ip, (end, decision) in self._running.items():
            self._restoring.add(ip)
            self.ban(dataclasses.replace(decision, bantime=end - now, decided_at=now))
        if problem is not None:
            self.rebuilds += 1
            log.error("nft_table_rebuilt", problem=problem, bans_restored=len(self._running))

    def forget_ended(self, now: float) -> None:
        """Drop bans that are over (at least 1 s left is needed for a new element)."""
        ended = [ip for ip, (end, _) in self._running.items() if end - now < 1]
        for ip in ended:
            del self._running[ip]

    @property
    def running(self) -> int:
        return len(self._running)

    async def close(self) -> None:
        await self._batcher.close()


class Intake:
    """Receives what the listeners deliver, runs it through the pipeline, logs what matters."""

    def __init__(self, pipeline: SecurityPipeline, enforcer: Enforcer,
                 journal: JournalWriter | None, guard: ResendGuard) -> None:
        self.pipeline, self.enforcer, self.journal = pipeline, enforcer, journal
        self.guard = guard
        self.received: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.throttle = Throttle()
        self._loop = asyncio.get_running_loop()

    def on_message(self, message: SyslogMessage | MalformedSyslog, transport: str) -> None:
        self._take(message, transport, None, 0)

    def on_reliable_message(self, message: SyslogMessage | MalformedSyslog, transport: str,
                            done: Done, *, session: int) -> None:
        self._take(message, transport, done, session)

    def relp_session_started(self, session: int, peer: str) -> None:
        self.guard.session_started(session, peer, self._loop.time())

    def relp_session_ended(self, session: int, peer: str, clean: bool) -> None:
        self.guard.session_ended(session, peer, clean, self._loop.time())

    def _take(self, message: SyslogMessage | MalformedSyslog, transport: str,
              done: Done | None, session: int) -> None:
        """Count, decide, keep. `done` (a RELP ack) runs once the message is durable: after its
        journal row is committed, or at once when it did not count toward anything."""
        self.received[transport] += 1
        now = self._loop.time()
        if type(message) is MalformedSyslog:
            self.drops["malformed_syslog"] += 1
            held = self.throttle.allow(("malformed_syslog", message.peer), now)
            if held is not None:
                log.warning("malformed_syslog", peer=message.peer, transport=transport,
                            reason=message.reason, raw=message.raw.decode("utf-8", "replace"),
                            suppressed=held)
            if done is not None:
                done()
            return
        assert type(message) is SyslogMessage
        digest = b""  # only RELP resends need finding
        if done is not None:
            digest = digest_of(message)
            if self.guard.is_resend(session, digest):
                # a resend after a reconnect: answer it once the original is on disk (a barrier)
                self.drops["relp_resend"] += 1
                if self.journal is not None:
                    self.journal.put(None, done)
                else:
                    done()
                return
        outcome = self.pipeline.handle(message, now)
        kind = type(outcome)
        if done is not None:
            self.guard.took(session, digest, counted=kind is Counted or kind is Banned)
        if kind is Counted or kind is Banned:
            if self.journal is not None:
                self.journal.put(journal_row(message, transport, digest), done, session)
            elif done is not None:
                done()
            if kind is Banned:
                self.enforcer.ban(outcome.decision)  # type: ignore[union-attr]
            return
        if done is not None:
            done()
        if kind is MalformedEvent:
            held = self.throttle.allow(("malformed_event", message.peer), now)
            if held is not None:
                log.warning("malformed_event", peer=message.peer, reason=outcome.reason,
                            raw=outcome.raw[:200], suppressed=held)
        elif kind is Ignored and outcome.reason != "unresolvable":
            held = self.throttle.allow(("protected", outcome.reason), now)
            if held is not None:
                log.info("not_banned", reason=outcome.reason, chain=outcome.event.client_chain,
                         peer=message.peer, suppressed=held)

    def on_drop(self, dropped: Dropped) -> None:
        self.drops[dropped.reason] += 1
        # a stranger's address may be forged (UDP): one line per transport, not per address
        peer = "" if dropped.reason == "sender_not_allowed" else dropped.peer
        key = (dropped.reason, peer, dropped.transport)
        held = self.throttle.allow(key, self._loop.time())
        if held is not None:
            log.warning("drop", reason=dropped.reason, peer=dropped.peer,
                        transport=dropped.transport, size=dropped.size, detail=dropped.detail,
                        suppressed=held)

    def stats(self) -> dict[str, object]:
        return {
            "received": dict(self.received),
            "drops": dict(self.drops),
            "outcomes": dict(self.pipeline.counts),
            "tracked": self.pipeline.jail.tracked,
            "evicted": self.pipeline.jail.evicted,
            "relp_resend_memory": self.guard.remembered,
            "bans": self.enforcer.bans,
            "bans_running": self.enforcer.running,
            "ban_errors": self.enforcer.errors,
            "nft_rebuilds": self.enforcer.rebuilds,
            **({"journal_rows": self.journal.rows, "journal_commits": self.journal.commits,
                "journal_errors": self.journal.errors, "journal_skipped": self.journal.skipped,
                "journal_pending": self.journal.pending,
                "journal_recoveries": self.journal.recoveries}
               if self.journal is not None else {}),
        }


def sender_admission(senders: NetworkSet) -> Admit:
    def admit(address: str) -> str | None:
        ip = parse_address(address.partition("%")[0])
        return str(ip) if ip is not None and ip in senders else None

    return admit


def build_pipeline(config: Config) -> SecurityPipeline:
    senders = NetworkSet(config.receiver.senders)
    jail = JailSettings(
        name="roundcube",
        maxretry=config.jail.maxretry,
        findtime=config.jail.findtime,
        bantime=config.jail.bantime,
        max_tracked=config.engine.max_tracked,
    )
    protections = Protections(
        trusted_proxies=NetworkSet(config.engine.trusted_proxies),
        ignoreip=NetworkSet(config.engine.ignoreip),
        senders=senders,
    )
    return SecurityPipeline(jail, protections)


def _listeners(config: Config, intake: Intake) -> list[UdpListener | TcpListener | RelpListener]:
    rc = config.receiver
    admit = sender_admission(NetworkSet(rc.senders))
    stream = {"admit": admit, "intake": intake, "max_connections": rc.max_connections,
              "max_connections_per_sender": rc.max_connections_per_sender,
              "idle_timeout": rc.idle_timeout}
    listeners: list[UdpListener | TcpListener | RelpListener] = [
        *(UdpListener(host, port, admit=admit, intake=intake,
                      max_message_size=rc.max_message_size, receive_buffer=rc.udp_receive_buffer)
          for host, port in rc.udp),
        *(TcpListener(host, port, max_message_size=rc.max_message_size, **stream)
          for host, port in rc.tcp),
        *(RelpListener(host, port, max_message_size=rc.relp_max_frame_size,
                       transport_name="relp", **stream)
          for host, port in rc.relp),
    ]
    if rc.tls or rc.relp_tls:
        ts = rc.tls_settings
        try:
            context = server_context(ts.certificate, ts.key, ts.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(f"receiver.tls_settings: cannot load the certificate, key or CA: "
                              f"{exc}") from None
        secure = {**stream, "ssl_context": context, "allowed_names": ts.client_names}
        listeners += [
            *(TcpListener(host, port, max_message_size=rc.max_message_size,
                          transport_name="tls", **secure) for host, port in rc.tls),
            *(RelpListener(host, port, max_message_size=rc.relp_max_frame_size,
                           transport_name="relp_tls", **secure) for host, port in rc.relp_tls),
        ]
    return listeners


async def _replay(journal: JournalWriter, config: Config, pipeline: SecurityPipeline,
                  guard: ResendGuard, enforcer: Enforcer) -> None:
    """Rebuild failure counts (and the RELP resend candidates) from the journal. A file that
    turns out damaged part-way is moved aside; what was read from it still counts."""
    loop = asyncio.get_running_loop()
    started, wall = loop.time(), time.time()
    horizon = max(config.jail.findtime, config.journal.relp_dedupe)
    tails: defaultdict[str, deque[bytes]] = defaultdict(lambda: deque(maxlen=guard.window))
    count = banned = 0
    try:
        rows = journal.journal.replay(wall - horizon)
        while chunk := await journal.run_blocking(lambda: list(islice(rows, 10_000))):
            # in chunks: a full store does not have to fit in memory at once
            for ban in replay(chunk, pipeline, tails, loop.time(), wall,
                              counts_since=wall - config.jail.findtime):
                enforcer.ban(ban)
                banned += 1
            count += len(chunk)
        stats = await journal.run_blocking(journal.journal.stats)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        aside, _ = await journal.run_blocking(lambda: journal.journal.recover(wall))
        log.error("journal_recovered_from_damage", fault=str(exc), moved_to=aside,
                  replayed_before=count)
        stats = {}
    # every session broke when bansink stopped: the senders' next sessions may resend
    for sender, digests in tails.items():
        guard.restore(sender, digests, loop.time() + config.journal.relp_dedupe)
    log.info("replayed", rows=count, bans=banned, tracked=pipeline.jail.tracked,
             seconds=round(loop.time() - started, 3), **stats)


async def serve(config: Config, backend: BanBackend, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    enforcer = Enforcer(backend, config.nftables.commit_interval)
    await enforcer.setup()
    pipeline = build_pipeline(config)
    guard = ResendGuard(config.journal.relp_window, config.journal.relp_dedupe)
    journal = None
    if config.journal.path:
        jc = config.journal
        journal = JournalWriter(Journal(Path(jc.path), retention=jc.retention,
                                        max_rows=jc.max_rows), jc.commit_interval, guard,
                                salvage_horizon=max(config.jail.findtime, jc.relp_dedupe))
        for event, fields in await journal.open():
            log.error(event, **fields)
        await _replay(journal, config, pipeline, guard, enforcer)
    intake = Intake(pipeline, enforcer, journal, guard)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("stats", **intake.stats()))
    listeners = _listeners(config, intake)
    too_many = descriptor_budget(listeners, config.receiver.max_connections)
    if too_many is not None:
        raise ListenError(too_many)
    try:
        for listener in listeners:
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
        log.info("started", senders=config.receiver.senders, maxretry=config.jail.maxretry,
                 findtime=config.jail.findtime, bantime=config.jail.bantime)
        prune_every = min(config.jail.findtime / 4, 30.0)
        last_prune = last_stats = loop.time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_TICK)
            except TimeoutError:
                pass
            now = loop.time()
            guard.expire(now)
            prune = now - last_prune >= prune_every
            await enforcer.verify()
            in_use, limit = descriptors_in_use()
            if in_use >= limit * 0.9 and intake.throttle.allow(("descriptors",), now) is not None:
                log.error("descriptors_exhausted", in_use=in_use, limit=limit,
                          hint="new connections fail on every listener; raise LimitNOFILE or "
                               "lower receiver.max_connections")
            if prune:
                last_prune = now
                pipeline.expire(now)
                enforcer.forget_ended(now)
            if journal is not None:
                await journal.housekeeping(time.time(), prune=prune)
            if now - last_stats >= STATS_INTERVAL:
                last_stats = now
                log.info("stats", **intake.stats())
    finally:
        for listener in listeners:
            await listener.stop()
        await enforcer.close()
        if journal is not None:
            await journal.close()
        log.info("stopped", **intake.stats())
