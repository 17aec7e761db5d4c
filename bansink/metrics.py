"""Prometheus metrics at `/metrics`, read at scrape time from the counters the parts already
keep (a custom collector): the per-message path pays nothing for them beyond the counts it
made anyway. Only the two histograms are observed as things happen, once per ban and once per
nft transaction, never per message.

Labels are bounded and never an address: `transport` (udp, tcp, tls, relp, relp_tls),
`sender` (a name from `[metrics] senders`, else "other"), `reason` (drop reasons, a fixed set),
`outcome`, `source` and `jail` (names from the config), `origin` (jail, manual, escalation,
peer), `channel` and `kind` (notifications). Addresses are counted per sender only until the
next fold (every second): what a series is named after is the configured name.

`add_routes(app, metrics)` puts `/metrics` on an aiohttp application: the control socket's, and
whatever else serves that application (the page helper decides who may read it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bansink.engine.addresses import NetworkSet, parse_address
from bansink.engine.decisions import MANUAL_JAIL, Ban, Origin

if TYPE_CHECKING:
    from bansink.engine.pipeline import SecurityPipeline

    from .bans import BanBook
    from .config import Config, SenderName
    from .enforcer import Enforcer
    from .hub import Hub
    from .notify import Notifier
    from .store.writer import JournalWriter

FOLD_INTERVAL = 1.0
"""How often the listeners' per-address counts are folded into per-sender-name totals: what
they hold between two folds is bounded by the messages of one interval."""
OTHER = "other"
MAX_NAMED_PEERS = 4096

TIME_TO_BAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NFT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def _version() -> str:
    try:
        return metadata.version("bansink")
    except metadata.PackageNotFoundError:
        return "-"


class Counted(Protocol):
    """A listener as the metrics see it."""

    @property
    def transport_name(self) -> str: ...

    def take_received(self) -> Counter[str]: ...


class Parts(Protocol):
    """The daemon's parts the collector reads (the Daemon is one); read at each scrape, so a
    part made at start (hub, listeners) is seen once it exists."""

    @property
    def config(self) -> Config: ...
    @property
    def pipeline(self) -> SecurityPipeline: ...
    @property
    def enforcer(self) -> Enforcer: ...
    @property
    def book(self) -> BanBook: ...
    @property
    def journal(self) -> JournalWriter | None: ...
    @property
    def hub(self) -> Hub | None: ...
    @property
    def listeners(self) -> Sequence[Counted]: ...
    @property
    def notifier(self) -> Notifier | None: ...


class SenderTally:
    """Messages per (transport, sender name), folded from the listeners' per-address counts."""

    def __init__(self, names: Sequence[SenderName]) -> None:
        self._named = [(sender.name, NetworkSet(sender.networks)) for sender in names]
        self._cache: dict[str, str] = {}
        self.totals: Counter[tuple[str, str]] = Counter()

    def name_of(self, peer: str) -> str:
        name = self._cache.get(peer)
        if name is None:
            ip = parse_address(peer.partition("%")[0])
            name = next((n for n, networks in self._named if ip is not None and ip in networks),
                        OTHER)
            if len(self._cache) >= MAX_NAMED_PEERS:
                self._cache.clear()
            self._cache[peer] = name
        return name

    def fold(self, listeners: Sequence[Counted]) -> None:
        for listener in listeners:
            transport = listener.transport_name
            for peer, count in listener.take_received().items():
                self.totals[(transport, self.name_of(peer))] += count


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class DaemonCollector(Collector):
    """Everything read from the parts at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        parts = m.parts
        m.senders.fold(parts.listeners)
        # one pass over the running bans (the one cost that grows with them: ~0.5 ms per
        # 10,000 bans), shared by bansink's and fail2ban's names
        running: Counter[tuple[str, Origin]] = Counter(
            (ban.jail, ban.origin) for _, ban in parts.enforcer.running())
        yield from self._intake(m, parts)
        yield from self._engine(parts)
        yield from self._bans(parts, running)
        yield from self._journal(parts)
        yield from self._notify(parts)
        yield from self._fail2ban(parts, running)

    @staticmethod
    def _intake(m: Metrics, parts: Parts) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "bansink_messages_received", "Syslog messages delivered by the listeners, per "
            "transport and sender name ([metrics] senders; 'other' for the rest).",
            labels=["transport", "sender"])
        for (transport, sender), n in sorted(m.senders.totals.items()):
            received.add_metric([transport, sender], n)
        yield received
        hub = parts.hub
        drops = CounterMetricFamily(
            "bansink_dropped", "Input dropped, per reason: senders not allowed, malformed or "
            "oversized frames and syslog, RELP errors and resends, idle connections, ...",
            labels=["reason"])
        for reason, n in sorted((hub.drops if hub is not None else {}).items()):
            drops.add_metric([reason], n)
        yield drops
        unanswered = GaugeMetricFamily(
            "bansink_relp_unacknowledged_frames", "RELP frames received and not answered yet "
            "(most wait for their journal commit), per transport.", labels=["transport"])
        for listener in parts.listeners:
            count = getattr(listener, "unanswered", None)
            if callable(count):
                unanswered.add_metric([listener.transport_name], count())
        yield unanswered

    @staticmethod
    def _engine(parts: Parts) -> Iterator[Metric]:
        pipeline = parts.pipeline
        outcomes = CounterMetricFamily(
            "bansink_outcomes", "What the engine made of each message (replayed ones "
            "included): banned, counted, ignored (protected), not_matched, malformed_event.",
            labels=["outcome"])
        for outcome, n in sorted(pipeline.counts.items()):
            outcomes.add_metric([_snake(outcome)], n)
        yield outcomes
        events = CounterMetricFamily(
            "bansink_events", "Security events (failed logins) per source.", labels=["source"])
        for source, n in sorted(pipeline.events.items()):
            events.add_metric([source], n)
        yield events
        failures = CounterMetricFamily(
            "bansink_failures", "Failures counted per jail (fail2ban's Total failed).",
            labels=["jail"])
        tracked = GaugeMetricFamily(
            "bansink_tracked_addresses", "Addresses with failures inside findtime, per jail "
            "(fail2ban's Currently failed).", labels=["jail"])
        evicted = CounterMetricFamily(
            "bansink_evicted", "Tracked addresses forgotten because engine.max_tracked was "
            "reached, per jail.", labels=["jail"])
        for jail in pipeline.jails:
            name = jail.settings.name
            failures.add_metric([name], jail.failed)
            tracked.add_metric([name], jail.tracked)
            evicted.add_metric([name], jail.evicted)
        yield from (failures, tracked, evicted)

    @staticmethod
    def _bans(parts: Parts, running: Counter[tuple[str, Origin]]) -> Iterator[Metric]:
        enforcer = parts.enforcer
        active = GaugeMetricFamily(
            "bansink_bans_active", "Bans in force now, per jail and origin.",
            labels=["jail", "origin"])
        for (jail, origin), n in sorted(running.items()):
            active.add_metric([jail, origin.value], n)
        yield active
        yield CounterMetricFamily("bansink_unbans", "Bans ended early (unban, allow).",
                                  value=enforcer.lifts)
        yield CounterMetricFamily("bansink_nft_errors", "nft transactions that failed.",
                                  value=enforcer.errors)
        yield CounterMetricFamily(
            "bansink_nft_rebuilds", "Times bansink's table was found missing or flushed and "
            "rebuilt.", value=enforcer.rebuilds)
        book = parts.book
        yield GaugeMetricFamily("bansink_allow_entries", "The admin's allow entries.",
                                value=len(book.allowed))
        yield GaugeMetricFamily(
            "bansink_ban_history_addresses", "Addresses with ban records inside "
            "journal.history (repeat offenders are judged by them).", value=len(book.history))

    @staticmethod
    def _journal(parts: Parts) -> Iterator[Metric]:
        writer = parts.journal
        if writer is None:
            return
        path = writer.journal.path
        size = GaugeMetricFamily(
            "bansink_journal_bytes", "Size of the SQLite file that holds the journal and the "
            "ban store, and of its write-ahead log.", labels=["file"])
        size.add_metric(["db"], _file_size(path))
        size.add_metric(["wal"], _file_size(path.with_name(path.name + "-wal")))
        yield size
        yield CounterMetricFamily("bansink_journal_rows", "Message rows written.",
                                  value=writer.rows)
        yield CounterMetricFamily("bansink_journal_commits", "Journal transactions.",
                                  value=writer.commits)
        yield CounterMetricFamily("bansink_journal_errors", "Journal writes that failed.",
                                  value=writer.errors)
        yield CounterMetricFamily(
            "bansink_journal_skipped_rows", "UDP/TCP rows not journaled because "
            "100,000 were waiting for the disk.", value=writer.skipped)
        yield GaugeMetricFamily("bansink_journal_pending_rows", "Rows waiting for the disk.",
                                value=writer.pending)

    @staticmethod
    def _notify(parts: Parts) -> Iterator[Metric]:
        notifier = parts.notifier
        if notifier is None:
            return
        sent = CounterMetricFamily(
            "bansink_notifications_sent", "Messages delivered, per channel and kind (ban: the "
            "first, sent at once; digest).", labels=["channel", "kind"])
        failed = CounterMetricFamily("bansink_notifications_failed",
                                     "Deliveries that failed or timed out.", labels=["channel"])
        dropped = CounterMetricFamily(
            "bansink_notifications_dropped", "Messages dropped because the channel's queue "
            "was full (its endpoint is failing or slow).", labels=["channel"])
        for channel in notifier.channels:
            for kind in ("ban", "digest"):
                sent.add_metric([channel.name, kind], channel.sent[kind])
            failed.add_metric([channel.name], channel.failed)
            dropped.add_metric([channel.name], channel.dropped)
        yield from (sent, failed, dropped)
        yield CounterMetricFamily(
            "bansink_notifications_suppressed", "Messages held back by notify.max_per_hour "
            "(their bans go out in the next digest).", value=notifier.window.suppressed_total)

    @staticmethod
    def _fail2ban(parts: Parts, running: Counter[tuple[str, Origin]]) -> Iterator[Metric]:
        """The names of the widely used fail2ban exporter (hectorjsmith's), so its Grafana
        dashboard works as is. Gauges, as that exporter has them."""
        jails = parts.pipeline.jails
        banned: Counter[str] = Counter()
        for (name, _), n in running.items():
            banned[name] += n
        yield GaugeMetricFamily("f2b_up", "bansink is up (fail2ban exporter name).", value=1)
        yield GaugeMetricFamily("f2b_jail_count", "Jails configured.", value=len(jails))
        families = {
            "banned_current": GaugeMetricFamily(
                "f2b_jail_banned_current", "Addresses banned now, per jail.", labels=["jail"]),
            "banned_total": GaugeMetricFamily(
                "f2b_jail_banned_total", "Bans decided since start, per jail.",
                labels=["jail"]),
            "failed_current": GaugeMetricFamily(
                "f2b_jail_failed_current", "Addresses with failures inside findtime, per jail.",
                labels=["jail"]),
            "failed_total": GaugeMetricFamily(
                "f2b_jail_failed_total", "Failures counted since start, per jail.",
                labels=["jail"]),
            "ban_time": GaugeMetricFamily("f2b_config_jail_ban_time", "bantime, seconds.",
                                          labels=["jail"]),
            "find_time": GaugeMetricFamily("f2b_config_jail_find_time", "findtime, seconds.",
                                           labels=["jail"]),
            "max_retries": GaugeMetricFamily("f2b_config_jail_max_retries", "maxretry.",
                                             labels=["jail"]),
        }
        for jail in jails:
            s = jail.settings
            for key, value in (("banned_current", banned[s.name]), ("banned_total", jail.bans),
                               ("failed_current", jail.tracked),
                               ("failed_total", jail.failed), ("ban_time", s.bantime),
                               ("find_time", s.findtime), ("max_retries", s.maxretry)):
                families[key].add_metric([s.name], value)
        if banned[MANUAL_JAIL]:
            families["banned_current"].add_metric([MANUAL_JAIL], banned[MANUAL_JAIL])
        yield from families.values()
        writer = parts.journal
        errors = GaugeMetricFamily("f2b_errors", "Errors since start, per kind (nft: failed "
                                   "transactions, journal: failed writes).", labels=["type"])
        errors.add_metric(["nft"], parts.enforcer.errors)
        errors.add_metric(["journal"], writer.errors if writer is not None else 0)
        yield errors
        version = GaugeMetricFamily("f2b_version", "Version of bansink.",
                                    labels=["exporter", "fail2ban"])
        version.add_metric([f"bansink {_version()}", "-"], 1)
        yield version


def _snake(name: str) -> str:
    """'MalformedEvent' -> 'malformed_event'."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


class Metrics:
    """The registry: the collector over the parts, the histograms and the ban counter (fed by
    hooks on the enforcer and the ban book), and the process's own CPU, memory and
    descriptors. `start()` runs the fold of per-address counts; `close()` ends it."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.senders = SenderTally(parts.config.metrics.senders)
        self.registry = CollectorRegistry(auto_describe=False)
        self.time_to_ban = Histogram(
            "bansink_time_to_ban_seconds", "From the hub taking the message that decided a ban "
            "(or the admin's request) to the end of the nft transaction that put it in the "
            "kernel set.", buckets=TIME_TO_BAN_BUCKETS, registry=self.registry)
        self.nft_transaction = Histogram(
            "bansink_nft_transaction_seconds", "One nft transaction of bans and unbans, from "
            "building it to nft's answer.", buckets=NFT_BUCKETS, registry=self.registry)
        self.bans = PromCounter(
            "bansink_bans", "Bans decided since start (not those restored at start), per jail "
            "and origin.", ["jail", "origin"], registry=self.registry)
        self.registry.register(DaemonCollector(self))
        ProcessCollector(namespace="bansink", registry=self.registry)
        self._task: asyncio.Task[None] | None = None

    def observe_bans(self) -> None:
        """Hook the histograms and the ban counter to the enforcer and the ban book (after
        start-up's restore and replay: those bans are not new)."""
        enforcer = self.parts.enforcer
        enforcer.on_commit = self.nft_transaction.observe
        enforcer.on_enforced = self._enforced
        self.parts.book.on_ban.append(self._banned)

    def _enforced(self, ban: Ban, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self.time_to_ban.observe(seconds)

    def _banned(self, ban: Ban) -> None:
        self.bans.labels(ban.jail, ban.origin.value).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text, or OpenMetrics if asked for) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def _fold(self) -> None:
        while True:
            await asyncio.sleep(FOLD_INTERVAL)
            self.senders.fold(self.parts.listeners)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._fold())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def add_routes(app: web.Application, metrics: Metrics) -> None:
    """`GET /metrics` on `app`."""

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", scrape)
