"""The blocked list's page of bans, built on the book's public parts, says what
`BanBook.running()` says; its filters, orders and pages; and the overview's numbers from the
store."""

import asyncio
import time
from ipaddress import ip_address, ip_network

from bansink.actions.dryrun import DryRunBackend
from bansink.bans import BanBook
from bansink.config import parse_config
from bansink.enforcer import Enforcer
from bansink.engine.decisions import Ban, Origin
from bansink.jails import build_pipeline
from bansink.store.journal import Journal, JournalRow
from bansink.web.data import BanQuery, ban_page, prefix_of, read_overview

CONFIG = parse_config({"jails": {"roundcube": {"sources": ["roundcube-security_log"]},
                                 "dovecot": {"sources": ["dovecot"]}}})


def with_book(scenario):
    async def main():
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(build_pipeline(CONFIG), enforcer, None, findtime=lambda jail: 600.0)
        loop = asyncio.get_running_loop()
        now = time.time()
        targets = ["203.0.113.9", "203.0.113.10", "2001:db8::5", "198.51.100.7", "10.0.0.1"]
        for i, text in enumerate(targets):
            book.ban(Ban(target=ip_address(text), origin=Origin.JAIL if i % 2 else
                         Origin.ESCALATION, jail="roundcube" if i % 2 else "dovecot",
                         failures=3 + i, bantime=600.0 * (5 - i), decided_at=loop.time()),
                     started_at=now - 60 * ((i * 3) % 5))
        book.manual_ban(ip_network("203.0.113.0/24"), None, None, "the whole block")
        book.manual_ban(ip_address("192.0.2.77"), "dovecot", 60.0, "by hand")
        await asyncio.sleep(0.05)
        try:
            return await scenario(book)
        finally:
            await enforcer.close()

    return asyncio.run(main())


def targets(page) -> list[str]:
    return [row.target for row in page.rows]


def test_the_default_page_is_what_the_book_says():
    async def scenario(book):
        return await ban_page(book, BanQuery(per=25)), book.running()

    page, running = with_book(scenario)
    stable = [(r.target, r.jail, r.origin, r.failures, r.started_at, r.note) for r in running]
    assert [(r.target, r.jail, r.origin, r.failures, r.started_at, r.note)
            for r in page.rows] == stable  # the same rows, the same order (soonest end first)
    for mine, theirs in zip(page.rows, running, strict=True):  # read a moment apart
        assert (mine.left is None) == (theirs.left is None)
        assert mine.left is None or abs(mine.left - theirs.left) <= 1
    assert (page.total, page.running, page.page, page.pages) == (7, 7, 1, 1)


def test_orders_filters_and_pages():
    async def scenario(book):
        q = BanQuery
        return {
            "target": targets(await ban_page(book, q(sort="target"))),
            "target desc": targets(await ban_page(book, q(sort="target", descending=True))),
            "failures desc": [r.failures for r in (await ban_page(book, q(
                sort="failures", descending=True))).rows],
            "since": [r.started_at for r in (await ban_page(book, q(sort="since"))).rows],
            "network": targets(await ban_page(book, q(q="203.0.113.0/25"))),
            "address": targets(await ban_page(book, q(q="203.0.113.10"))),
            "part": targets(await ban_page(book, q(q="113.1"))),
            "jail": {r.jail for r in (await ban_page(book, q(jail="dovecot"))).rows},
            "origin": targets(await ban_page(book, q(origin="manual", sort="target"))),
            "past the end": (await ban_page(book, q(per=25, page=99))).page,
            "bad text": (await ban_page(book, q(q="<script>"))).problem,
            "by jail": (await ban_page(book, q(sort="jail"))).rows,
            "by jail desc": (await ban_page(book, q(sort="jail", descending=True))).rows,
            "default": targets(await ban_page(book, q())),
            "running": book.running(),
        }

    got = with_book(scenario)
    assert got["target"] == ["10.0.0.1", "192.0.2.77", "198.51.100.7", "203.0.113.0/24",
                             "203.0.113.9", "203.0.113.10", "2001:db8::5"]
    assert got["target desc"] == got["target"][::-1]
    assert got["failures desc"] == sorted(got["failures desc"], reverse=True)
    assert got["since"] == sorted(got["since"])
    assert got["network"] == ["203.0.113.10", "203.0.113.9"]  # by end: .10 ends sooner
    assert got["address"] == ["203.0.113.10", "203.0.113.0/24"]  # and the network holding it
    assert got["part"] == ["203.0.113.10"]
    assert got["jail"] == {"dovecot"}
    assert got["origin"] == ["192.0.2.77", "203.0.113.0/24"]
    assert got["past the end"] == 1
    assert "not part of an address" in got["bad text"]
    # a column's ties keep the default order (soonest end first), in either direction
    for name, jails in (("by jail", ["dovecot", "manual", "roundcube"]),
                        ("by jail desc", ["roundcube", "manual", "dovecot"])):
        rows = got[name]
        assert list(dict.fromkeys(r.jail for r in rows)) == jails
        for jail in jails:
            assert [r.target for r in rows if r.jail == jail] == \
                [t for t in got["default"] if any(r.target == t and r.jail == jail
                                                  for r in rows)]


def test_pages_split_the_list_in_order(monkeypatch):
    monkeypatch.setattr("bansink.web.data.PER_PAGE", (3, 25))

    async def scenario(book):
        pages = [await ban_page(book, BanQuery(per=3, page=n)) for n in (1, 2, 3, 4)]
        return [(targets(p), p.page, p.pages) for p in pages], \
            [b.target for b in book.running()]

    pages, running = with_book(scenario)
    assert [p[1:] for p in pages] == [(1, 3), (2, 3), (3, 3), (3, 3)]  # past the end: the last
    assert pages[0][0] + pages[1][0] + pages[2][0] == running


def test_the_query_string_is_bounded():
    q = BanQuery.parse({"sort": "evil", "per": "1000000", "page": "-4", "q": "x" * 500,
                        "dir": "desc"})
    assert (q.sort, q.per, q.page, len(q.q), q.descending) == ("left", 200, 1, 100, True)
    assert BanQuery.parse({"per": "abc"}).per == 50
    assert BanQuery(sort="target").params(page=3) == {"sort": "target", "page": "3"}


def test_the_overview_numbers_from_the_store(tmp_path):
    journal = Journal(tmp_path / "journal.db", retention=86400, max_rows=10_000)
    journal.open()
    now = time.time()
    rows = [JournalRow(now - 30, "tcp", "192.0.2.2", b"x", b"", "203.0.113.7", "roundcube"),
            JournalRow(now - 90, "tcp", "192.0.2.2", b"x", b"", "203.0.113.7", "roundcube"),
            JournalRow(now - 7200, "relp", "192.0.2.3", b"x", b"", "203.0.113.8", "roundcube"),
            JournalRow(now - 7300, "relp", "192.0.2.3", b"x", b"", "2001:db8::1", "dovecot"),
            # a jail counting IPv6 clients by their /64 keeps the prefix as the row's address
            JournalRow(now - 7400, "relp", "192.0.2.3", b"x", b"", "2001:db8::/64", "dovecot"),
            JournalRow(now - 90000, "tcp", "192.0.2.2", b"x", b"", "198.51.100.1", "dovecot")]

    def ban(db):
        db.execute("INSERT INTO ban (target, jail, origin, failures, started_at) "
                   "VALUES ('203.0.113.7', 'roundcube', 'jail', 2, ?)", (now - 20,))

    journal.append(rows, [ban])
    journal.close()
    o = read_overview(tmp_path / "journal.db", now)
    assert sum(o["failures_hour"].counts) == 2 and o["failures_hour"].counts[-1] == 1
    assert sum(o["failures_day"].counts) == 5  # the one older than a day is left out
    assert sum(o["bans_hour"].counts) == 1 and o["bans_hour"].counts[-1] == 1
    assert o["top_addresses"][0] == ("203.0.113.7", 2)
    assert dict(o["top_prefixes"]) == {"203.0.113.0/24": 3, "2001:db8::/64": 2}
    assert sorted(o["senders"]) == [("192.0.2.2", "tcp", 2), ("192.0.2.3", "relp", 3)]
    assert prefix_of("198.51.100.1") == "198.51.100.0/24"


def test_since_finds_a_ban_whose_target_is_in_two_jails_or_not_the_same_object():
    async def scenario(book):
        loop = asyncio.get_running_loop()
        now = time.time()
        shared = ip_address("198.51.100.99")
        for jail, ago in (("roundcube", 500), ("dovecot", 50)):
            book.ban(Ban(target=shared, origin=Origin.JAIL, jail=jail, failures=3,
                         bantime=900.0, decided_at=loop.time()), started_at=now - ago)
        await asyncio.sleep(0.05)
        # a ban restored at start holds an equal target, not the entry's own object
        (jail, target), entry = next((k, e) for k, e in book.entries.items()
                                     if str(k[1]) == "10.0.0.1")
        del book.entries[(jail, target)]
        book.entries[(jail, ip_address("10.0.0.1"))] = entry
        page = await ban_page(book, BanQuery(sort="since"))
        return {(r.target, r.jail): r.started_at for r in page.rows}, \
            [r.started_at for r in page.rows], now, entry.started_at

    found, order, now, restored = with_book(scenario)
    assert found[("198.51.100.99", "roundcube")] == now - 500
    assert found[("198.51.100.99", "dovecot")] == now - 50
    assert found[("10.0.0.1", "dovecot")] == restored
    assert order == sorted(order)
