import asyncio
from ipaddress import ip_address

from bansink.actions.backend import CommitResult
from bansink.actions.dryrun import DryRunBackend
from bansink.enforcer import Enforcer
from bansink.engine.jail import BanDecision


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
            enforcer.ban(BanDecision(ip_address(f"203.0.113.{i}"), "roundcube", 6, 60, 0.0))
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
        self.applied += [(str(b.ip), b.bantime) for b in result.bans]
        return result

    def verify(self) -> str | None:
        missing, self.missing = self.missing, None
        return missing


def decision(ip: str, bantime: float, at: float) -> BanDecision:
    return BanDecision(ip_address(ip), "roundcube", 6, bantime, at)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


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
