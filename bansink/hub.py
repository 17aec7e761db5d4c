"""The per-message hub between the listeners and the engine, the journal and the ban book."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import cast

import structlog

from bansink.engine.addresses import text_of
from bansink.engine.events import MalformedEvent
from bansink.engine.pipeline import Banned, Counted, Ignored, Outcome, SecurityPipeline
from bansink.receiver.intake import Dropped
from bansink.receiver.syslog import MalformedSyslog, SyslogMessage

from .bans import BanBook
from .logs import Throttle
from .resends import ResendGuard
from .store.journal import JournalRow
from .store.writer import Done, JournalWriter

log = structlog.get_logger("bansink")


def digest_of(message: SyslogMessage) -> bytes:
    """What identifies a RELP message for resend detection: its sender and its bytes."""
    return hashlib.blake2b(message.peer.encode() + b"\0" + message.raw, digest_size=16).digest()


_COUNTED = (Counted, Banned)
_tuple = tuple.__new__


def journal_row(message: SyslogMessage, transport: str, digest: bytes,
                outcome: Counted | Banned) -> JournalRow:
    """The row of a message that counted, with what it counted for: the address, or the IPv6
    prefix its jail counts by (the key its ban's evidence is found by). Built as a tuple is
    (a NamedTuple's own constructor is a Python call: 250 against 120 ns, once per row)."""
    address = outcome.key if isinstance(outcome, Counted) else outcome.bans[0].target
    return _tuple(JournalRow, (message.received_at, transport, message.peer, message.raw,
                               digest, text_of(address), outcome.event.service))


class Hub:
    """The per-message hub: takes what the listeners deliver (receiver.intake.Intake), has it
    judged, keeps what counted (the journal; RELP answers once it is on disk), hands bans to the
    ban book, counts and logs what matters. Start-up replay goes through `judge` as well."""

    def __init__(self, pipeline: SecurityPipeline, bans: BanBook,
                 journal: JournalWriter | None, guard: ResendGuard) -> None:
        """`journal` None: nothing is kept, RELP is answered on receipt."""
        self.pipeline, self.bans, self.journal = pipeline, bans, journal
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

    def judge(self, message: SyslogMessage | MalformedSyslog, now: float,
              quiet: bool = False) -> Outcome | None:
        """The one way a message becomes an outcome, live or replayed: None for malformed
        syslog; malformed events and protected addresses are logged here (throttled), unless
        `quiet` (a replay: the pipeline's counts say what happened)."""
        if isinstance(message, MalformedSyslog):
            self.drops["malformed_syslog"] += 1
            if quiet:
                return None
            held = self.throttle.allow(("malformed_syslog", message.peer), now)
            if held is not None:
                log.warning("malformed_syslog", peer=message.peer, reason=message.reason,
                            raw=message.raw.decode("utf-8", "replace"), suppressed=held)
            return None
        outcome = self.pipeline.handle(message, now)
        if quiet:
            return outcome
        if isinstance(outcome, MalformedEvent):
            held = self.throttle.allow(("malformed_event", message.peer), now)
            if held is not None:
                log.warning("malformed_event", peer=message.peer, reason=outcome.reason,
                            raw=outcome.raw[:200], suppressed=held)
        elif isinstance(outcome, Ignored) and outcome.reason != "unresolvable":
            held = self.throttle.allow(("protected", outcome.reason), now)
            if held is not None:
                log.info("not_banned", reason=outcome.reason, chain=outcome.event.client_chain,
                         peer=message.peer, suppressed=held)
        return outcome

    def _take(self, message: SyslogMessage | MalformedSyslog, transport: str,
              done: Done | None, session: int) -> None:
        """Count, decide, keep. `done` (a RELP ack) runs once the message is durable: after its
        journal row is committed, or at once when it did not count toward anything."""
        self.received[transport] += 1
        now = self._loop.time()
        digest = b""  # only RELP resends need finding
        if done is not None and isinstance(message, SyslogMessage):
            digest = digest_of(message)
            if self.guard.is_resend(session, digest):
                # a resend after a reconnect: answer it once the original is on disk (a barrier)
                self.drops["relp_resend"] += 1
                if self.journal is not None:
                    self.journal.put(None, done)
                else:
                    done()
                return
        outcome = self.judge(message, now)
        counted = isinstance(outcome, _COUNTED)
        if digest:
            self.guard.took(session, digest, counted=counted)
        if counted and self.journal is not None:
            # counted: a well-formed message (judge gives None for malformed syslog)
            self.journal.put(journal_row(cast(SyslogMessage, message), transport, digest,
                                         cast(Counted | Banned, outcome)), done, session)
        elif done is not None:
            done()
        if isinstance(outcome, Banned):
            for ban in outcome.bans:
                self.bans.ban(ban)

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

    def unwritten(self, row: JournalRow, session: int) -> None:
        """A failed write lost this row: a RELP resend of it must count again."""
        if row.digest:
            self.guard.forget(session, row.peer, row.digest)

    def counters(self) -> dict[str, object]:
        return {"received": dict(self.received), "drops": dict(self.drops)}
