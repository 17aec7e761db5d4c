import asyncio
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from structlog.testing import capture_logs

from bansink.actions.backend import CommitResult
from bansink.actions.dryrun import DryRunBackend
from bansink.actions.layout import JailScope, Layout
from bansink.enforcer import Enforcer
from bansink.engine.decisions import Ban, Origin

from support import until


class CountingBackend(DryRunBackend):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []

    def commit(self):
        result = super().commit()
        self.commits.append(len(result.bans))
        return result


def test_bans_decided_in_one_tick_go_out_in_one_commit():
    backend = CountingBackend()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.05)
        for i in range(50):
            enforcer.ban(decision(f"203.0.113.{i}", 60, 0.0))
        await enforcer.close()
        return enforcer.bans

    assert asyncio.run(scenario()) == 50
    assert backend.commits == [50]


class FlakyBackend(DryRunBackend):
    """Fails the commits it is told to; reports a missing table when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = 0
        self.missing: str | None = None
        self.applied: list[tuple[str, float]] = []

    def commit(self) -> CommitResult:
        result = super().commit()
        if self.fail_next:
            self.fail_next -= 1
            return CommitResult(result.bans, error="netlink: No buffer space available")
        self.applied += [(str(b.target), b.bantime) for b in result.bans]
        return result

    def verify(self) -> str | None:
        missing, self.missing = self.missing, None
        return missing


def decision(ip: str, bantime: float, at: float, jail: str = "roundcube") -> Ban:
    target = ip_network(ip) if "/" in ip else ip_address(ip)
    return Ban(target=target, origin=Origin.JAIL, jail=jail, failures=6, bantime=bantime,
               decided_at=at)


def test_bans_a_failed_commit_left_out_are_tried_again_and_running_ones_restored():
    backend = FlakyBackend()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.01)
        now = asyncio.get_running_loop().time()
        backend.fail_next = 1
        enforcer.ban(decision("203.0.113.1", 600, now))
        await until(lambda: enforcer.errors == 1)
        assert backend.applied == []
        await enforcer.verify()  # the failed ban is tried again
        await until(lambda: enforcer.bans == 1)
        assert [ip for ip, _ in backend.applied] == ["203.0.113.1"]
        enforcer.ban(decision("203.0.113.2", 1.5, now - 1))  # under a second left: over
        await until(lambda: enforcer.bans == 2)
        backend.applied.clear()
        backend.missing = "table inet bansink was missing"
        await enforcer.verify()
        await until(lambda: backend.applied)
        await enforcer.close()
        return enforcer

    enforcer = asyncio.run(scenario())
    [(ip, left)] = backend.applied  # only the running ban is put back, with its time left
    assert ip == "203.0.113.1" and 598 < left < 600
    assert enforcer.bans == 2 and enforcer.rebuilds == 1  # restored, not counted again


class AddressesOnly(FlakyBackend):
    """Refuses networks the way NftablesSet does."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[str] = []

    def commit(self) -> CommitResult:
        result = DryRunBackend.commit(self)
        self.tried += [str(b.target) for b in result.bans]
        nets = tuple(b for b in result.bans if isinstance(b.target, IPv4Network | IPv6Network))
        if not nets:
            return result
        return CommitResult(nets, error=f"refused {nets[0].target}",
                            refused=tuple(b.target for b in nets))


def test_the_ban_line_names_target_and_origin_and_keeps_ip_for_an_address():
    backend = AddressesOnly()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.01)
        now = asyncio.get_running_loop().time()
        with capture_logs() as logs:
            enforcer.ban(decision("203.0.113.7", 600, now))
            enforcer.ban(decision("2001:db8:1::/64", 600, now))
            await until(lambda: enforcer.errors == 1 and enforcer.bans == 1)
            await enforcer.verify()
            await enforcer.verify()
            await asyncio.sleep(0.05)
        await enforcer.close()
        return enforcer, logs

    enforcer, logs = asyncio.run(scenario())
    [ban] = [e for e in logs if e["event"] == "ban"]
    assert (ban["ip"], ban["target"], ban["origin"], ban["jail"], ban["count"]) == (
        "203.0.113.7", "203.0.113.7", "jail", "roundcube", 6)
    [failed] = [e for e in logs if e["event"] == "ban_failed"]
    assert failed["targets"] == ["2001:db8:1::/64"] and "2001:db8:1::/64" in failed["error"]
    # a network the backend refused is not tried again at every verify, nor counted as running
    assert backend.tried == ["203.0.113.7", "2001:db8:1::/64"]
    assert enforcer.counters()["bans_running"] == 1


def test_a_network_ban_a_backend_applies_is_logged_by_target_alone():
    async def scenario():
        enforcer = Enforcer(DryRunBackend(), interval=0.01)
        with capture_logs() as logs:
            enforcer.ban(decision("198.51.100.0/24", 600, asyncio.get_running_loop().time()))
            await until(lambda: enforcer.bans == 1)
        await enforcer.close()
        return logs

    [ban] = [e for e in asyncio.run(scenario()) if e["event"] == "ban"]
    assert "ip" not in ban and (ban["target"], ban["origin"]) == ("198.51.100.0/24", "jail")


def test_one_address_banned_by_two_jails_is_two_running_bans():
    backend = FlakyBackend()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.01)
        now = asyncio.get_running_loop().time()
        enforcer.ban(decision("203.0.113.7", 600, now, jail="kerio"))
        enforcer.ban(decision("203.0.113.7", 60, now, jail="james"))
        await until(lambda: enforcer.bans == 2)
        await enforcer.close()
        return enforcer

    enforcer = asyncio.run(scenario())
    assert enforcer.counters()["bans_running"] == 2
    assert sorted(backend.applied) == [("203.0.113.7", 60), ("203.0.113.7", 600)]


def test_a_new_layout_ends_the_bans_of_jails_gone_and_puts_the_others_back():
    backend = FlakyBackend()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.01)
        now = asyncio.get_running_loop().time()
        enforcer.ban(decision("203.0.113.7", 600, now, jail="kerio"))
        enforcer.ban(decision("203.0.113.8", 600, now, jail="james"))
        await until(lambda: enforcer.bans == 2)
        backend.applied.clear()
        await enforcer.configure(Layout(jails=(JailScope("kerio", (25,)),)))
        await until(lambda: backend.applied)
        await enforcer.close()
        return enforcer

    enforcer = asyncio.run(scenario())
    assert backend.layout.jails == (JailScope("kerio", (25,)),)
    assert [ip for ip, _ in backend.applied] == ["203.0.113.7"]  # into kerio's (new) set
    assert enforcer.bans == 2 and enforcer.counters()["bans_running"] == 1


def test_a_large_commit_logs_its_new_bans_as_lines_listing_the_targets():
    """Above BAN_LINES_UP_TO new bans in a commit, one `bans` line per jail, origin, count and
    bantime (BAN_LINE_TARGETS targets at most each) instead of a `ban` line each; at debug
    level the `ban` line of each as before."""
    import logging

    import structlog

    from bansink import enforcer as module

    addresses = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2 * module.BAN_LINE_TARGETS
                                                                    + 10)]

    async def scenario(level: int):
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
        enforcer = Enforcer(DryRunBackend(), interval=0.01)
        now = asyncio.get_running_loop().time()
        with capture_logs() as logs:
            for address in addresses:
                enforcer.ban(decision(address, 600, now))
            enforcer.ban(decision("2001:db8::7", 600, now, jail="kerio"))
            await until(lambda: enforcer.bans == len(addresses) + 1)
        await enforcer.close()
        return logs

    try:
        logs = asyncio.run(scenario(logging.INFO))
        lines = [e for e in logs if e["event"] == "bans"]
        assert not [e for e in logs if e["event"] == "ban"]
        assert [(e["jail"], e["bans"], e["origin"], e["count"], e["bantime"]) for e in lines] == [
            ("roundcube", 1000, "jail", 6, 600.0), ("roundcube", 1000, "jail", 6, 600.0),
            ("roundcube", 10, "jail", 6, 600.0), ("kerio", 1, "jail", 6, 600.0)]
        assert [t for e in lines for t in e["targets"]] == [*addresses, "2001:db8::7"]
        assert all(e["latency_ms"] >= e["latency_ms_min"] >= 0 and e["until"] for e in lines)
        logs = asyncio.run(scenario(logging.DEBUG))
        assert [e["ip"] for e in logs if e["event"] == "ban"] == [*addresses, "2001:db8::7"]
        assert not [e for e in logs if e["event"] == "bans"]
    finally:
        structlog.reset_defaults()
