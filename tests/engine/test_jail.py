from ipaddress import ip_address

import pytest

from bansink.engine.decisions import Origin
from bansink.engine.jail import Jail, JailSettings

A, B = ip_address("203.0.113.7"), ip_address("2001:db8::7")


def jail(**kw) -> Jail:
    return Jail(JailSettings(name="roundcube",
                             **{"maxretry": 3, "findtime": 60, "ipv6_prefix": 128, **kw}))


def test_maxretry_failures_within_findtime_ban():
    j = jail(bantime=120)
    assert j.observe(A, 0.0) is None
    assert j.observe(A, 10.0) is None
    ban = j.observe(A, 59.0)
    assert ban is not None
    assert (ban.target, ban.origin, ban.jail, ban.failures, ban.bantime, ban.decided_at) == (
        A, Origin.JAIL, "roundcube", 3, 120, 59.0)


def test_failures_older_than_findtime_do_not_count():
    j = jail()
    j.observe(A, 0.0)
    j.observe(A, 30.0)
    assert j.observe(A, 60.0) is None  # the failure at 0 has left the window
    assert j.failures_of(A, 60.0) == 2
    assert j.observe(A, 61.0) is not None


def test_addresses_are_counted_separately():
    j = jail()
    for t in range(2):
        assert j.observe(A, t) is None
        assert j.observe(B, t) is None
    assert j.observe(B, 2).target == B


def test_a_ban_resets_the_count():
    j = jail()
    for t in range(3):
        j.observe(A, t)
    assert j.failures_of(A, 3) == 0
    assert j.observe(A, 3) is None


def test_expire_forgets_addresses_whose_latest_failure_left_the_window():
    j = jail()
    j.observe(A, 0.0)
    j.observe(B, 20.0)
    j.observe(B, 30.0)
    assert j.expire(59.0) == 0
    assert j.expire(60.0) == 1
    assert j.tracked == 1 and j.failures_of(B, 60.0) == 2
    assert j.expire(90.0) == 1 and j.tracked == 0


def test_tracked_addresses_are_capped_oldest_first():
    j = jail(max_tracked=2)
    ips = [ip_address(f"198.51.100.{i}") for i in range(3)]
    j.observe(ips[0], 0)
    j.observe(ips[1], 1)
    j.observe(ips[0], 2)  # refreshes ips[0]: ips[1] is now the oldest
    j.observe(ips[2], 3)
    assert j.evicted == 1 and j.tracked == 2
    assert j.failures_of(ips[1], 3) == 0
    assert j.failures_of(ips[0], 3) == 2


@pytest.mark.parametrize("kw", [{"maxretry": 0}, {"findtime": 0}, {"bantime": -1},
                                {"max_tracked": 0}])
def test_nonsense_settings_are_refused(kw):
    with pytest.raises(ValueError):
        JailSettings(name="x", **kw)


def test_next_deadline_is_when_the_quietest_address_leaves_the_window():
    j = Jail(JailSettings("t", maxretry=5, findtime=60, bantime=1))
    assert j.next_deadline() is None
    j.observe(A, 10.0)
    j.observe(B, 20.0)
    j.observe(A, 30.0)  # A is now the latest: B leaves first
    assert j.next_deadline() == 80.0
    assert j.expire(79.0) == 0 and j.expire(80.0) == 1
    assert j.next_deadline() == 90.0


def test_trim_forgets_the_quietest_past_a_lowered_max_tracked():
    j = Jail(JailSettings("t", maxretry=5, findtime=60, bantime=1, max_tracked=10))
    j.observe(A, 1.0)
    j.observe(B, 2.0)
    j.settings = JailSettings("t", maxretry=5, findtime=60, bantime=1, max_tracked=1)
    assert j.trim() == 1 and j.tracked == 1 and j.evicted == 1
    assert j.next_deadline() == 62.0  # B, the latest, stays


def test_an_address_already_banned_is_not_banned_again_until_its_ban_ends():
    jail = Jail(JailSettings("j", maxretry=2, findtime=60, bantime=100))
    ip = ip_address("203.0.113.7")
    assert jail.observe(ip, 0.0) is None
    assert jail.observe(ip, 1.0) is not None
    # the failures still in flight from it: counted, no second ban
    assert [jail.observe(ip, 2.0 + i) for i in range(10)] == [None] * 10
    assert jail.held == 10 and jail.banned == 1 and jail.tracked == 0
    assert jail.next_deadline() == 101.0
    # once the ban is over, it counts from zero again
    assert jail.observe(ip, 102.0) is None
    assert jail.observe(ip, 103.0) is not None
    assert jail.held == 10


def test_ended_bans_are_forgotten_by_expiry_and_bounded_by_max_tracked():
    jail = Jail(JailSettings("j", maxretry=1, findtime=60, bantime=10, max_tracked=3))
    for i in range(5):
        assert jail.observe(ip_address(f"203.0.113.{i}"), float(i)) is not None
    assert jail.banned == 3  # the two oldest went first
    jail.expire(12.5)  # the bans decided at 2.0 ended at 12.0
    assert jail.banned == 2
    jail.expire(100.0)
    assert jail.banned == 0 and jail.next_deadline() is None
