"""Why an address is banned, or why it is not: its bans with the exact messages that caused
them, the failures each jail holds against it now, and what protects it (`bansink explain`);
and its ban history (`bansink history`). Neither fail2ban nor CrowdSec can answer the first:
bansink keeps the raw messages that counted."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from bansink.engine.addresses import IPAddress

from .bans import AdminError, BanBook, covers, parse_target
from .store import bans as store
from .store.writer import JournalWriter


def _time(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(
        timespec="seconds")


def _ban(row: store.BanRow) -> dict[str, Any]:
    return {"id": row.id, "target": row.target, "jail": row.jail, "origin": row.origin,
            "failures": row.failures, "started": _time(row.started_at),
            "ends": _time(row.ends_at), "lifted": _time(row.lifted_at),
            "lifted_by": row.lifted_by, "escalation_step": row.step, "note": row.note}


def _message(row: store.MessageRow) -> dict[str, Any]:
    return {"time": _time(row.received_at), "source": row.service, "sender": row.peer,
            "transport": row.transport, "raw": row.raw.decode("utf-8", "replace")}


def _targets_holding(db: sqlite3.Connection, address: IPAddress) -> list[str]:
    """The address and every banned network that holds it."""
    networks = [row[0] for row in db.execute(
        "SELECT DISTINCT target FROM ban WHERE target LIKE '%/%'")]
    holding = [n for n in networks if covers(ip_network(n), address)]
    return [str(address), *holding]


def _address(text: str) -> IPAddress:
    target = parse_target(text)
    if isinstance(target, IPv4Network | IPv6Network):
        raise AdminError(f"{text}: name one address")
    return target


async def history(book: BanBook, journal: JournalWriter | None, text: str
                  ) -> dict[str, Any]:
    """Every ban of the address (and of networks holding it) in the store, newest first."""
    address = _address(text)
    if journal is None:
        raise AdminError("no store: journal.path is empty, so bans are not remembered")

    def read() -> list[store.BanRow]:
        db = journal.journal.db
        return store.history(db, _targets_holding(db, address))

    return {"address": str(address), "bans": [_ban(row) for row in
                                              await journal.run_blocking(read)]}


async def explain(book: BanBook, journal: JournalWriter | None, text: str) -> dict[str, Any]:
    """The address's running bans, each ban in the store with the messages that caused it,
    the latest messages that counted for it, each jail's failures against it now, and what
    protects it."""
    address = _address(text)
    now = asyncio.get_running_loop().time()
    pipeline = book.pipeline
    protected = []
    reason = pipeline.protections.reason(address)
    if reason is not None:
        protected.append(reason)
    for target, row in book.allowed.items():
        if covers(target, address):
            protected.append(f"allow entry {row.target}"
                             + (f" until {_time(row.until)}" if row.until else "")
                             + (f" ({row.note})" if row.note else ""))
    failures = {}
    for jail in pipeline.jails:
        if jail.ignoreip is not None and address in jail.ignoreip:
            protected.append(f"jails.{jail.settings.name}.ignoreip")
        failures[jail.settings.name] = {"failures": jail.failures_of(address, now),
                                        "maxretry": jail.settings.maxretry,
                                        "findtime": jail.settings.findtime}
    running = [b._asdict() for b in book.running() if covers(parse_target(b.target), address)]
    report: dict[str, Any] = {
        "address": str(address), "banned": bool(running), "running_bans": running,
        "failures_now": failures, "protected_by": protected,
    }
    if journal is None:
        report["store"] = "none (journal.path is empty): no history or messages"
        return report

    # what the failures counted for: the address, or the IPv6 prefix a jail counts it by
    keys = list(dict.fromkeys([str(address),
                               *(str(jail.key_of(address)) for jail in pipeline.jails)]))

    def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        db = journal.journal.db
        bans = []
        for row in store.history(db, _targets_holding(db, address), limit=50):
            bans.append({**_ban(row),
                         "messages": [_message(m) for m in store.evidence(db, row.id)]})
        return bans, [_message(m) for m in store.messages_of(db, keys, limit=200)]

    report["bans"], report["messages"] = await journal.run_blocking(read)
    return report
