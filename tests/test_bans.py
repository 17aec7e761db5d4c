"""The ban book, in-process: repeat offenders with fail2ban's bantime.* words (an injected
clock), manual bans and what they refuse, unban and allow entries."""

import asyncio
import math
import re
from ipaddress import ip_address, ip_network

import pytest

from bansink.actions.dryrun import DryRunBackend
from bansink.bans import AdminError, BanBook, parse_target
from bansink.config import parse_config
from bansink.enforcer import Enforcer
from bansink.engine.decisions import Origin
from bansink.engine.pipeline import Banned
from bansink.jails import build_pipeline
from bansink.receiver.syslog import parse_syslog

ATTACKER = "203.0.113.7"
HOUR = 3600.0


def line(ip: str) -> bytes:
    return (f'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="{ip}", '
            f'user="u", code=0').encode()


class Clock:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0

    def __call__(self) -> float:
        return self.wall


def scenario(jail: dict, steps):
    """Run `steps(book, fail, clock)` with a book over one jail (maxretry 2, bantime 1h) on a
    loop; `fail(ip)` sends one failure at the clock's time and returns the bans it made."""
    config = parse_config({"jail": {"maxretry": 2, "bantime": "1h", "findtime": "10m", **jail},
                           "receiver": {"senders": ["192.0.2.2/32"]}})

    async def main():
        clock = Clock()
        pipeline = build_pipeline(config)
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(pipeline, enforcer, None, findtime=lambda jail: 600.0, clock=clock)
        start = clock.wall

        def fail(ip: str) -> list:
            message = parse_syslog(line(ip), peer="192.0.2.2", received_at=clock.wall)
            outcome = pipeline.handle(message, clock.wall - start)
            decided = outcome.bans if isinstance(outcome, Banned) else ()
            return [book.ban(ban) for ban in decided]

        result = steps(book, fail, clock)
        await enforcer.close()
        return result

    return asyncio.run(main())


def bantimes(jail: dict, offences: int = 4) -> list[float]:
    """The length of each of an address's bans, a day apart, as the book enforces them."""
    def steps(book, fail, clock):
        lengths = []
        for _ in range(offences):
            fail(ATTACKER)
            (ban,) = fail(ATTACKER)
            lengths.append(ban.bantime)
            clock.wall += 86400  # the ban is over; the next offence a day later
        return lengths

    return scenario(jail, steps)


def test_without_bantime_increment_every_ban_lasts_bantime():
    assert bantimes({}) == [HOUR] * 4


def test_the_default_formula_doubles_each_ban_and_maxtime_caps_it():
    inc = {"bantime.increment": True, "bantime.maxtime": "5h", "bantime.overalljails": False}
    assert bantimes(inc, 5) == [HOUR, 2 * HOUR, 4 * HOUR, 5 * HOUR, 5 * HOUR]


def test_the_third_ban_lasts_factor_squared_times_bantime():
    formula = {"bantime.increment": True, "bantime.factor": 3,
               "bantime.formula": "ban.Time * banFactor**ban.Count"}
    assert bantimes(formula, 3)[2] == 3**2 * HOUR
    multipliers = {"bantime.increment": True, "bantime.multipliers": "1 3 9"}
    assert bantimes(multipliers, 4) == [HOUR, 3 * HOUR, 9 * HOUR, 9 * HOUR]


def test_an_escalated_ban_says_so_and_holds_the_address_until_it_ends():
    def steps(book, fail, clock):
        fail(ATTACKER)
        (first,) = fail(ATTACKER)
        clock.wall += 2 * HOUR  # over
        fail(ATTACKER)
        (second,) = fail(ATTACKER)
        clock.wall += 1.5 * HOUR  # longer than bantime, within the escalated ban
        return first, second, fail(ATTACKER) + fail(ATTACKER)

    first, second, held = scenario({"bantime.increment": True}, steps)
    assert (first.origin, first.bantime) == (Origin.JAIL, HOUR)
    assert (second.origin, second.bantime) == (Origin.ESCALATION, 2 * HOUR)
    assert held == []


def test_manual_bans_refuse_protected_and_allowed_targets():
    def steps(book, fail, clock):
        with pytest.raises(AdminError, match=re.escape("protected (sender 192.0.2.2/32)")):
            book.manual_ban(ip_address("192.0.2.2"))
        book.allow(ip_network("198.51.100.0/24"), note="office")
        with pytest.raises(AdminError, match=re.escape("allow entry 198.51.100.0/24")):
            book.manual_ban(ip_address("198.51.100.9"))
        with pytest.raises(AdminError, match="no jail 'nope'"):
            book.manual_ban(ip_address(ATTACKER), jail="nope")
        with pytest.raises(AdminError, match="365 days"):
            book.manual_ban(ip_address(ATTACKER), duration=400 * 86400)
        manual = book.manual_ban(ip_address(ATTACKER))
        filed = book.manual_ban(ip_address("203.0.113.8"), jail="roundcube")
        return manual, filed, fail(ATTACKER) + fail(ATTACKER)

    manual, filed, again = scenario({}, steps)
    assert (manual.jail, manual.bantime, manual.origin) == ("manual", math.inf, Origin.MANUAL)
    assert (filed.jail, filed.bantime) == ("roundcube", HOUR)  # the jail's bantime
    assert again == []  # the jails hold an address banned by hand


def test_unban_starts_the_count_again_and_allow_stops_it():
    def steps(book, fail, clock):
        fail(ATTACKER)
        fail(ATTACKER)
        book.unban(ip_address(ATTACKER))
        first = fail(ATTACKER)
        second = fail(ATTACKER)
        book.allow(ip_address(ATTACKER), duration=60)
        allowed = [fail(ATTACKER) for _ in range(10)]
        clock.wall += 61
        book.expire_allowed()
        after = fail(ATTACKER) + fail(ATTACKER)
        return first, second, allowed, after

    first, second, allowed, after = scenario({}, steps)
    assert first == [] and len(second) == 1  # maxretry more after the unban
    assert allowed == [[]] * 10
    assert [str(b.target) for b in after] == [ATTACKER]  # banned again once it ran out


@pytest.mark.parametrize(("text", "want"), [
    ("203.0.113.7", "203.0.113.7"), ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:db8::/64", "2001:db8::/64"), ("203.0.113.7/32", "203.0.113.7"),
])
def test_targets_are_addresses_or_networks(text, want):
    assert str(parse_target(text)) == want


@pytest.mark.parametrize("text", ["203.0.113.7/24", "0.0.0.0/0", "::/0", "example.org", ""])
def test_targets_that_are_refused(text):
    with pytest.raises(AdminError):
        parse_target(text)


def prefix_scenario(jail: dict, steps, engine: dict | None = None):
    """Like `scenario`, with `steps` a coroutine function; returns its result and the running
    bans' targets once every commit is done."""
    config = parse_config({"jail": {"maxretry": 1, "bantime": "1h", "findtime": "10m", **jail},
                           "receiver": {"senders": ["192.0.2.2/32"]}, "engine": engine or {}})

    async def main():
        clock = Clock()
        pipeline = build_pipeline(config)
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(pipeline, enforcer, None, findtime=lambda jail: 600.0, clock=clock)

        def fail(ip: str) -> list:
            message = parse_syslog(line(ip), peer="192.0.2.2", received_at=clock.wall)
            outcome = pipeline.handle(message, asyncio.get_running_loop().time())
            decided = outcome.bans if isinstance(outcome, Banned) else ()
            return [book.ban(ban) for ban in decided]

        async def committed(count: int) -> None:
            async with asyncio.timeout(5):
                while len(list(enforcer.running())) != count:
                    await asyncio.sleep(0.005)

        result = await steps(book, fail, clock, committed)
        await enforcer.close()
        return result, sorted(str(ban.target) for _, ban in enforcer.running())

    return asyncio.run(main())


def test_n_bans_inside_a_24_become_one_prefix_element_in_the_same_commit():
    async def steps(book, fail, clock, committed):
        first = fail("203.0.113.1")
        await committed(1)  # one committed before, two in the tick that widens
        second, third = fail("203.0.113.2"), fail("203.0.113.3")
        return first, second, third, fail("203.0.113.4")  # held by the prefix ban

    (first, second, third, held), running = prefix_scenario({"prefix.count": 3}, steps)
    assert [str(b.target) for b in first + second] == ["203.0.113.1", "203.0.113.2"]
    (wide,) = third
    assert (str(wide.target), wide.origin, wide.bantime) == ("203.0.113.0/24",
                                                             Origin.ESCALATION, HOUR)
    assert held == []
    assert running == ["203.0.113.0/24"]


def test_a_64_with_n_banned_addresses_becomes_one_prefix_element():
    async def steps(book, fail, clock, committed):
        for i in range(1, 4):
            fail(f"2001:db8:7:1::{i}")
        return None

    settings = {"ipv6_prefix": 128, "prefix.count": 3, "prefix.ipv6": 64}
    assert prefix_scenario(settings, steps)[1] == ["2001:db8:7:1::/64"]


def test_ipv6_attackers_are_banned_by_their_64_and_unban_of_an_address_lifts_it():
    async def steps(book, fail, clock, committed):
        (ban,) = fail("2001:db8:7:1::1")
        await committed(1)
        ended = book.unban(ip_address("2001:db8:7:1::99"))  # the address the admin sees
        return ban, ended

    (ban, ended), running = prefix_scenario({}, steps)
    assert str(ban.target) == "2001:db8:7:1::/64"
    assert [str(b.target) for b in ended] == ["2001:db8:7:1::/64"] and running == []


def test_a_prefix_holding_a_protected_address_is_never_banned():
    async def steps(book, fail, clock, committed):
        book.allow(ip_address("203.0.113.200"))
        return [b for i in range(1, 6) for b in fail(f"203.0.113.{i}")] + fail("2001:db8:7::1")

    _, running = prefix_scenario({"prefix.count": 3}, steps,
                                 engine={"ignoreip": ["2001:db8:7::5"]})
    # no /24 (an allow entry is inside it); the /64 holding an ignoreip is counted by address
    assert running == ["2001:db8:7::1", *(f"203.0.113.{i}" for i in range(1, 6))]


def test_allowing_an_address_lifts_the_prefix_ban_that_holds_it():
    async def steps(book, fail, clock, committed):
        for i in range(1, 4):
            fail(f"203.0.113.{i}")
        await committed(1)
        ended = book.allow(ip_address("203.0.113.3"))
        return ended

    ended, running = prefix_scenario({"prefix.count": 3}, steps)
    assert [str(b.target) for b in ended] == ["203.0.113.0/24"] and running == []


def test_status_and_the_bans_list_order_bans_by_time_left_then_target_in_pages():
    """status(): each jail's banned list, soonest end first, by target within a second, until
    lifted last; the control API's JSON of it is json.dumps's text; running() pages."""
    import json

    from bansink.bans import Entry
    from bansink.control import status_json
    from bansink.engine.decisions import Ban

    from support import until

    config = parse_config({"jail": {"maxretry": 2, "bantime": "1h"},
                           "receiver": {"senders": ["192.0.2.2/32"]}})

    async def main():
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(build_pipeline(config), enforcer, None, findtime=lambda jail: 600.0)
        now = asyncio.get_running_loop().time()
        for i, seconds in enumerate([600, 60, 600, 60.2, 3600, 59.9, 600]):
            book.ban(Ban(target=ip_address(f"203.0.113.{50 - i}"), origin=Origin.JAIL,
                         jail="roundcube", failures=2, bantime=seconds, decided_at=now))
        book.manual_ban(ip_network("198.51.100.0/24"))
        book.manual_ban(ip_address("2001:db8::9"))
        book.manual_ban(ip_address("203.0.113.48"), duration=60)
        book.manual_ban(ip_address("203.0.113.48"), jail="roundcube")  # in two jails
        restored = Ban(target=ip_address("203.0.113.99"), origin=Origin.JAIL, jail="roundcube",
                       failures=2, bantime=120, decided_at=now)
        book.entries[("roundcube", restored.target)] = Entry(0.0, now + 120)
        enforcer.restore([restored])
        await until(lambda: enforcer.counters()["bans_running"] == 11)
        result = book.status(), book.running(), book.running(3, 4), book.running(None, 10)
        await enforcer.close()
        return result

    status, everything, page, tail = asyncio.run(main())
    jails = status["jails"]
    assert [(b["target"], b["left"]) for b in jails["roundcube"]["banned"]] == [
        ("203.0.113.45", 60), ("203.0.113.47", 60), ("203.0.113.49", 60),
        ("203.0.113.99", 120), ("203.0.113.44", 600), ("203.0.113.50", 600),
        ("203.0.113.46", 3600), ("203.0.113.48", 3600)]  # the manual ban replaced its 600
    assert [(b["target"], b["left"]) for b in jails["manual"]["banned"]] == [
        ("203.0.113.48", 60), ("198.51.100.0/24", None), ("2001:db8::9", None)]
    assert jails["roundcube"]["currently_banned"] == 8 and jails["manual"]["currently_banned"] == 3
    assert status_json(status) == json.dumps(status)
    order = [(b.left is None, b.left or 0, b.target) for b in everything]
    assert order == sorted(order) and len(everything) == 11
    assert [b.target for b in everything[:4]] == [
        "203.0.113.45", "203.0.113.47", "203.0.113.48", "203.0.113.49"]
    def ids(bans: list) -> list:
        return [(b.jail, b.target, b.left) for b in bans]

    assert ids(page) == ids(everything[4:7]) and ids(tail) == ids(everything[10:])
