"""The nftables backend against the real kernel, inside a namespace each test creates."""

import math
import os
import time
from ipaddress import ip_address, ip_network

import pytest

from bansink.actions.backend import BackendUnavailable
from bansink.actions.layout import JailScope, Layout
from bansink.actions.nftables import FRESH_BULK, NftablesSet, load_libnftables
from bansink.engine.decisions import Ban, Origin

from support import Listener, Netns, connects, namespaces, wait_until


def ban(ip: str, bantime: float = 600, jail: str = "roundcube") -> Ban:
    target = ip_network(ip) if "/" in ip else ip_address(ip)
    return Ban(target=target, origin=Origin.JAIL, jail=jail, failures=6, bantime=bantime,
               decided_at=0.0)


@pytest.fixture
def ns():
    with namespaces("nft") as (ns,):
        yield ns


def setup(ns: Netns, **kw) -> NftablesSet:
    backend = NftablesSet(**kw)
    ns.in_namespace(backend.setup)
    return backend


def test_setup_creates_table_sets_and_chain_and_leaves_other_tables_alone(ns: Netns):
    ns.run("nft", "add table inet other; add chain inet other c { type filter hook input "
                  "priority 0; }; add rule inet other c counter accept")
    before = ns.nft_json("list", "table", "inet", "other")
    setup(ns)
    setup(ns)  # idempotent: nothing duplicated
    listed = ns.nft_json("list", "table", "inet", "bansink")["nftables"]
    sets = {i["set"]["name"]: i["set"] for i in listed if "set" in i}
    assert sets["ban4"]["type"] == "ipv4_addr" and sets["ban6"]["type"] == "ipv6_addr"
    assert set(sets) == {"ban4", "ban6", "net4", "net6",
                         "ban4_manual", "ban6_manual", "net4_manual", "net6_manual"}
    for name, s in sets.items():
        # address sets not interval (see actions/nftables.py); network sets small and apart
        assert s["flags"] == (["interval", "timeout"] if name.startswith("net") else ["timeout"])
        assert ns.set_elements(name=name) == {}  # the canary is all they hold
    chain = next(i["chain"] for i in listed if "chain" in i)
    assert (chain["hook"], chain["prio"], chain["policy"]) == ("input", -10, "accept")
    rules = [i["rule"] for i in listed if "rule" in i]
    assert len(rules) == 8
    for rule in rules:
        assert any("counter" in e for e in rule["expr"]) and {"drop": None} in rule["expr"]
    assert ns.nft_json("list", "table", "inet", "other") == before


def test_bans_are_set_elements_with_their_own_timeouts_in_one_commit(ns: Netns):
    backend = setup(ns)
    for b in (ban("203.0.113.7", 600), ban("2001:db8::7", 120), ban("::ffff:203.0.113.8", 300)):
        backend.add(b)
    result = ns.in_namespace(backend.commit)
    assert result.ok and len(result.bans) == 3
    v4 = ns.set_elements(name="ban4")
    v6 = ns.set_elements(name="ban6")
    assert v4["203.0.113.7"]["timeout"] == 600 and 590 <= v4["203.0.113.7"]["expires"] <= 600
    assert v6["2001:db8::7"]["timeout"] == 120
    assert "::ffff:203.0.113.8" in v6  # the engine normalises mapped addresses, not the backend


def test_a_second_ban_replaces_the_timeout(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.7", 600))
    ns.in_namespace(backend.commit)
    backend.add(ban("203.0.113.7", 7200))
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements()["203.0.113.7"]["timeout"] == 7200


def test_setup_keeps_existing_bans(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.7"))
    ns.in_namespace(backend.commit)
    setup(ns)
    assert "203.0.113.7" in ns.set_elements()


def test_configured_ports_limit_the_drop_rules_and_a_config_change_replaces_them(ns: Netns):
    setup(ns)
    setup(ns, layout=Layout(ports=(443, 80)))
    text = ns.run("nft", "list", "chain", "inet", "bansink", "input").stdout.decode()
    assert text.count("th dport { 80, 443 }") == 4  # addresses and networks, IPv4 and IPv6
    assert text.count("drop") == 8


def test_commit_recreates_the_table_if_it_was_deleted_underneath(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.6"))
    assert ns.in_namespace(backend.commit).rebuilt is False
    ns.run("nft", "delete", "table", "inet", "bansink")
    backend.add(ban("203.0.113.7"))
    result = ns.in_namespace(backend.commit)
    assert result.ok and result.rebuilt  # the caller must add 203.0.113.6 back
    assert set(ns.set_elements()) == {"203.0.113.7"}
    backend.add(ban("203.0.113.8"))
    assert ns.in_namespace(backend.commit).rebuilt is False


def ban_three(ns: Netns, backend: NftablesSet) -> None:
    for ip in ("203.0.113.7", "203.0.113.8", "2001:db8::7"):
        backend.add(ban(ip))
    assert ns.in_namespace(backend.commit).ok
    assert len(ns.set_elements()) == 2 and len(ns.set_elements(name="ban6")) == 1


def chains_and_rules(ns: Netns) -> dict[str, int]:
    listed = ns.nft_json("list", "table", "inet", "bansink")["nftables"]
    found = {i["chain"]["name"]: 0 for i in listed if "chain" in i}
    for item in listed:
        if "rule" in item:
            found[item["rule"]["chain"]] += 1
    return found


@pytest.mark.parametrize("outside", ["flush ruleset", "delete table inet bansink"])
def test_verify_rebuilds_the_table_after_it_was_removed_outside_bansink(ns: Netns, outside: str):
    backend = setup(ns, local_ports=[("udp", 514)], local_uids=[0])
    ban_three(ns, backend)
    assert ns.in_namespace(backend.verify) is None
    ns.run("nft", *outside.split())
    said = ns.in_namespace(backend.verify)
    assert said == ("table inet bansink was missing (flushed or deleted outside bansink); "
                    "re-created it without bans")
    assert chains_and_rules(ns) == {"input": 8, "local_senders": 1}
    assert ns.set_elements() == {} and ns.set_elements(name="ban6") == {}
    assert ns.in_namespace(backend.verify) is None


def test_verify_restores_changed_chains_and_keeps_the_bans(ns: Netns):
    backend = setup(ns)
    ban_three(ns, backend)
    ns.run("nft", "flush chain inet bansink input; add chain inet bansink stray")
    said = ns.in_namespace(backend.verify)
    assert said == ("table inet bansink: chain input had other rules, chain stray is not in the "
                    "config (changed outside bansink); restored")
    assert chains_and_rules(ns) == {"input": 8}
    assert len(ns.set_elements()) == 2  # nothing lost: the caller may re-add, need not


def test_verify_reports_a_missing_set(ns: Netns):
    backend = setup(ns)
    ban_three(ns, backend)
    ns.run("nft", "flush chain inet bansink input; delete set inet bansink ban6")
    said = ns.in_namespace(backend.verify)
    assert said.startswith("table inet bansink: set ban6 was missing, chain input had other rules")
    assert said.endswith("(flushed or deleted outside bansink); re-created it without bans")
    assert len(ns.set_elements()) == 2 and ns.set_elements(name="ban6") == {}


def test_verify_lists_no_set_elements_and_stays_cheap_on_a_big_set(ns: Netns):
    # BANSINK_VERIFY_ELEMENTS=100000 measures the README's figure; the default keeps it quick
    size = int(os.environ.get("BANSINK_VERIFY_ELEMENTS", "20000"))
    backend = setup(ns)
    for i in range(size):
        backend.add(ban(f"2001:db8:6::{i >> 16:x}:{i & 0xffff:x}"))
    assert ns.in_namespace(backend.commit).ok
    sent = []
    run = backend._run
    backend._run = lambda commands: sent.append(commands) or run(commands)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        assert ns.in_namespace(backend.verify) is None
        timings.append(time.perf_counter() - start)
    assert sent == [[{"list": {"ruleset": {"family": "inet"}}}]] * 5
    assert backend._nft.get_terse_output()  # listings leave set elements out
    print(f"verify() with {size} elements: best {min(timings) * 1000:.1f} ms, "
          f"worst {max(timings) * 1000:.1f} ms")
    assert min(timings) < 0.1  # listing the set's elements takes several times that


def test_remove_deletes_only_bansinks_table(ns: Netns):
    ns.run("nft", "add", "table", "inet", "other")
    backend = setup(ns)
    assert ns.in_namespace(backend.remove) is True
    assert ns.in_namespace(backend.remove) is False
    tables = [i["table"]["name"] for i in ns.nft_json("list", "tables")["nftables"] if "table" in i]
    assert tables == ["other"]


def test_missing_bindings_say_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "nftables", None)
    with pytest.raises(BackendUnavailable, match="apt-get install nftables python3-nftables"):
        load_libnftables()


def test_a_large_batch_goes_out_in_bounded_transactions(ns: Netns):
    backend = setup(ns)
    ips = [f"2001:db8:5::{i:x}" for i in range(25_000)]
    for ip in ips:
        backend.add(ban(ip))
    result = ns.in_namespace(backend.commit)
    assert result.ok and len(result.bans) == 25_000
    # a netlink dump of a big set taken while the machine is busy can come back short; a
    # missing element would stay missing, so listing again until complete still proves it
    wait_until(lambda: len(ns.set_elements(name="ban6")) == 25_000, 10, "all 25,000 elements")


def test_a_deleted_ban_leaves_the_set_and_the_others_stay(ns: Netns):
    backend = setup(ns)
    for ip in ("203.0.113.7", "203.0.113.8", "2001:db8::7", "2001:db8::8"):
        backend.add(ban(ip))
    assert ns.in_namespace(backend.commit).ok
    backend.delete(ip_address("203.0.113.7"))
    backend.delete(ip_address("2001:db8::8"))
    backend.add(ban("203.0.113.9"))  # deletions and bans in one transaction
    result = ns.in_namespace(backend.commit)
    assert result.ok and [str(b.target) for b in result.bans] == ["203.0.113.9"]
    assert [str(t) for t in result.deletes] == ["203.0.113.7", "2001:db8::8"]
    assert set(ns.set_elements()) == {"203.0.113.8", "203.0.113.9"}
    assert set(ns.set_elements(name="ban6")) == {"2001:db8::7"}
    assert ns.set_elements()["203.0.113.8"]["timeout"] == 600  # untouched


def test_deleting_an_address_that_is_not_banned_commits_fine(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.8"))
    backend.delete(ip_address("203.0.113.7"))  # never banned
    backend.delete(ip_address("2001:db8::7"))  # in a set that is empty
    assert ns.in_namespace(backend.commit).ok
    assert set(ns.set_elements()) == {"203.0.113.8"}
    backend.delete(ip_address("203.0.113.8"))
    backend.delete(ip_address("203.0.113.8"))
    assert ns.in_namespace(backend.commit).ok
    backend.delete(ip_address("203.0.113.8"))  # gone already
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements() == {}


def test_of_a_ban_and_a_delete_of_one_address_in_one_commit_the_later_wins(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.7"))
    backend.delete(ip_address("203.0.113.7"))
    backend.delete(ip_address("203.0.113.8"))
    backend.add(ban("203.0.113.8", 300))
    assert ns.in_namespace(backend.commit).ok
    assert {ip: e["timeout"] for ip, e in ns.set_elements().items()} == {"203.0.113.8": 300}


def test_a_network_goes_to_the_network_set_of_its_jail_with_its_timeout(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.7"))
    backend.add(ban("2001:db8:1::/64", 900))
    backend.add(ban("198.51.100.0/24"))
    assert ns.in_namespace(backend.commit).ok
    assert set(ns.set_elements()) == {"203.0.113.7"}
    assert ns.set_elements(name="net6")["2001:db8:1::/64"]["timeout"] == 900
    assert set(ns.set_elements(name="net4")) == {"198.51.100.0/24"}
    backend.add(ban("2001:db8:1::/64", 7200))  # a second ban: found in place, given its time
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements(name="net6")["2001:db8:1::/64"]["timeout"] == 7200
    backend.delete(ip_network("198.51.100.0/24"))
    backend.delete(ip_network("192.0.2.0/24"))  # never banned: no error
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements(name="net4") == {}
    backend.add(ban("2001:db8:2::/48", math.inf))  # until lifted: listed without a timeout
    assert ns.in_namespace(backend.commit).ok
    backend.delete(ip_network("2001:db8:2::/48"))
    assert ns.in_namespace(backend.commit).ok
    assert set(ns.set_elements(name="net6")) == {"2001:db8:1::/64"}


def test_a_ban_of_a_jail_the_layout_lacks_is_refused_by_name(ns: Netns):
    backend = setup(ns, layout=Layout(jails=(JailScope("kerio"),)))
    backend.add(ban("203.0.113.7", jail="kerio"))
    backend.add(ban("203.0.113.8", jail="gone"))
    result = ns.in_namespace(backend.commit)
    assert not result.ok and "no set pair for jail gone" in (result.error or "")
    assert [str(b.target) for b in result.bans] == ["203.0.113.8"]  # what did not go in
    assert set(ns.set_elements(name="ban4_kerio")) == {"203.0.113.7"}


def test_a_manual_ban_closes_every_port_whatever_the_jails(ns: Netns):
    backend = setup(ns, layout=SEED_JAILS)
    backend.add(ban("203.0.113.7", jail="manual"))
    backend.add(ban("2001:db8:9::/48", jail="manual"))
    assert ns.in_namespace(backend.commit).ok
    assert set(ns.set_elements(name="ban4_manual")) == {"203.0.113.7"}
    assert set(ns.set_elements(name="net6_manual")) == {"2001:db8:9::/48"}
    text = ns.run("nft", "list", "chain", "inet", "bansink", "input").stdout.decode()
    assert "ip saddr @ban4_manual counter packets 0 bytes 0 drop" in text


def test_a_ban_until_lifted_has_no_timeout(ns: Netns):
    backend = setup(ns)
    backend.add(ban("203.0.113.7", math.inf, jail="manual"))
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements(name="ban4_manual") == {"203.0.113.7": {}}


def test_verify_finds_a_flushed_set_by_its_canary(ns: Netns):
    backend = setup(ns, layout=SEED_JAILS)
    backend.add(ban("203.0.113.7", jail="kerio"))
    assert ns.in_namespace(backend.commit).ok
    assert ns.in_namespace(backend.verify) is None
    ns.run("nft", "flush", "set", "inet", "bansink", "ban4_kerio")
    said = ns.in_namespace(backend.verify)
    assert said is not None and "set ban4_kerio was emptied" in said
    assert ns.in_namespace(backend.verify) is None  # the canary is back: no alarm twice


def test_elements_lists_every_ban_set_without_the_canaries(ns: Netns):
    backend = setup(ns, layout=SEED_JAILS)
    backend.add(ban("203.0.113.7", jail="kerio"))
    backend.add(ban("2001:db8:1::/64", jail="james"))
    assert ns.in_namespace(backend.commit).ok
    listed = {name: [str(t) for t in targets]
              for name, targets in ns.in_namespace(backend.elements).items() if targets}
    assert listed == {"ban4_kerio": ["203.0.113.7"], "net6_james": ["2001:db8:1::/64"]}


# -- a set pair per jail ---------------------------------------------------------------------------

SEED_JAILS = Layout(jails=(JailScope("kerio", (25, 143, 465, 993)), JailScope("kopano", (443,)),
                           JailScope("james")))


def ban_sets(*jails: str) -> set[str]:
    return {f"{kind}{v}_{jail}" for kind in ("ban", "net") for v in (4, 6) for jail in jails}


def set_names(ns: Netns) -> set[str]:
    return {i["set"]["name"] for i in ns.nft_json("-t", "list", "sets", "inet")["nftables"]
            if "set" in i}


def test_each_jail_has_its_own_set_pair_and_drop_rules_on_its_ports(ns: Netns):
    setup(ns, layout=SEED_JAILS)
    assert set_names(ns) == ban_sets("kerio", "kopano", "james", "manual")
    text = ns.run("nft", "list", "chain", "inet", "bansink", "input").stdout.decode()
    assert ("ip saddr @ban4_kerio meta l4proto { tcp, udp } th dport { 25, 143, 465, 993 } "
            "counter packets 0 bytes 0 drop") in text
    assert ("ip6 saddr @ban6_kopano meta l4proto { tcp, udp } th dport 443 counter packets 0 "
            "bytes 0 drop") in text
    assert "ip saddr @ban4_james counter packets 0 bytes 0 drop" in text


def test_a_ban_goes_to_its_jails_set_and_one_address_can_be_in_several(ns: Netns):
    backend = setup(ns, layout=SEED_JAILS)
    backend.add(ban("203.0.113.7", 1200, jail="kerio"))
    backend.add(ban("203.0.113.7", 7200, jail="james"))
    backend.add(ban("2001:db8::7", 300, jail="kopano"))
    assert ns.in_namespace(backend.commit).ok
    assert {ip: e["timeout"] for ip, e in ns.set_elements(name="ban4_kerio").items()} == \
        {"203.0.113.7": 1200}
    assert {ip: e["timeout"] for ip, e in ns.set_elements(name="ban4_james").items()} == \
        {"203.0.113.7": 7200}
    assert set(ns.set_elements(name="ban6_kopano")) == {"2001:db8::7"}
    backend.delete(ip_address("203.0.113.7"), jail="kerio")  # one jail's ban ends
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements(name="ban4_kerio") == {}
    assert set(ns.set_elements(name="ban4_james")) == {"203.0.113.7"}
    backend.delete(ip_address("2001:db8::7"))  # every jail's
    assert ns.in_namespace(backend.commit).ok
    assert ns.set_elements(name="ban6_kopano") == {}


def test_a_ban_of_a_jail_not_in_the_layout_is_refused_by_name(ns: Netns):
    backend = setup(ns, layout=SEED_JAILS)
    backend.add(ban("203.0.113.7", jail="dovecot"))
    backend.add(ban("203.0.113.8", jail="kerio"))
    result = ns.in_namespace(backend.commit)
    assert not result.ok and "no set pair for jail dovecot" in result.error
    assert [str(t) for t in result.refused] == ["203.0.113.7"]
    assert set(ns.set_elements(name="ban4_kerio")) == {"203.0.113.8"}


def test_a_kerio_ban_drops_smtp_and_imap_but_not_the_web_server(ns: Netns):
    server, attacker, other = "192.0.2.1", "203.0.113.7", "203.0.113.8"
    for addr in (server, attacker, other):
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    listener = Listener(ns, 25, 143, 80)
    try:
        backend = setup(ns, layout=SEED_JAILS)
        assert all(connects(ns, attacker, server, port) for port in (25, 143, 80))
        backend.add(ban(attacker, 1200, jail="kerio"))
        assert ns.in_namespace(backend.commit).ok
        assert [connects(ns, attacker, server, port) for port in (25, 143, 80)] == \
            [False, False, True]
        assert all(connects(ns, other, server, port) for port in (25, 143, 80))
    finally:
        listener.close()


def test_a_new_layout_adds_the_new_jails_sets_and_removes_those_of_jails_gone(ns: Netns):
    backend = setup(ns)  # an old single-jail config: the shared pair
    backend.add(ban("203.0.113.7"))
    assert ns.in_namespace(backend.commit).ok
    backend.configure(SEED_JAILS)
    assert ns.in_namespace(backend.verify) is not None  # the table differs from the layout
    assert "ban4" not in set_names(ns) and "ban4_kerio" in set_names(ns)
    backend.add(ban("203.0.113.8", jail="kerio"))
    assert ns.in_namespace(backend.commit).ok
    backend.configure(Layout(jails=(JailScope("kerio", (25,)),)))
    ns.in_namespace(backend.setup)
    assert set_names(ns) == ban_sets("kerio", "manual")
    assert set(ns.set_elements(name="ban4_kerio")) == {"203.0.113.8"}  # its bans stay
    text = ns.run("nft", "list", "chain", "inet", "bansink", "input").stdout.decode()
    assert "th dport 25 counter" in text and "143" not in text


def test_strays_are_looked_for_in_the_sets_that_were_there_before_start(ns: Netns):
    """A set setup() just created holds only what bansink put there: remove_strays() does not
    list it (listing 100,000 elements costs half a second); a set found at start is listed."""
    backend = setup(ns)
    ban_three(ns, backend)
    ns.run("nft", "add element inet bansink ban4 { 198.51.100.77 timeout 1h }")
    assert ns.in_namespace(lambda: backend.remove_strays(set())) == []
    again = setup(ns)  # a restart: the table was kept
    keep = {("roundcube", ip_address(ip)) for ip in ("203.0.113.7", "2001:db8::7")}
    strays = ns.in_namespace(lambda: again.remove_strays(keep))
    assert sorted((name, str(target)) for name, target in strays) == [
        ("ban4", "198.51.100.77"), ("ban4", "203.0.113.8")]
    assert set(ns.set_elements()) == {"203.0.113.7"} and set(ns.set_elements(name="ban6")) == {
        "2001:db8::7"}


def committed_text(ns: Netns, backend: NftablesSet) -> str:
    """Commit in the namespace; return the nft commands the transaction ran."""
    ran: list[str] = []
    run = backend._run_text
    backend._run_text = lambda commands: (ran.append(commands), run(commands))[1]  # type: ignore
    try:
        assert ns.in_namespace(backend.commit).ok
    finally:
        del backend._run_text
    return "\n".join(ran)


def test_a_set_created_at_start_is_filled_with_plain_adds_and_a_reban_still_replaces_it(
        ns: Netns):
    """Into a set setup() just created, a bulk of bans is plain `add`s (no placeholder, no
    delete: half of libnftables' time at 100,000); an element added there before still goes
    add/delete/add, so its new timeout sticks."""
    backend = setup(ns)
    first = [f"2001:db8:6::{i:x}" for i in range(1, FRESH_BULK + 1)]
    for ip in first:
        backend.add(ban(ip, 600))
    text = committed_text(ns, backend)
    assert "delete element" not in text and text.count("add element") == 1
    second = [f"2001:db8:7::{i:x}" for i in range(1, FRESH_BULK + 1)]
    for ip in [*first[:3], *second]:
        backend.add(ban(ip, 7200))
    text = committed_text(ns, backend)
    deleted = text.split("delete element inet bansink ban6 { ")[1].split(" }")[0].split(", ")
    assert deleted == first[:3]  # only those added before
    elements = ns.set_elements(name="ban6")
    assert len(elements) == 2 * FRESH_BULK
    assert {elements[ip]["timeout"] for ip in first[:3] + second} == {7200}
    assert {elements[ip]["timeout"] for ip in first[3:]} == {600}


def test_plain_adds_end_with_the_first_small_commit_and_with_the_reconciliation(ns: Netns):
    backend = setup(ns)
    backend.add(ban("2001:db8:8::1"))
    committed_text(ns, backend)
    for i in range(FRESH_BULK):
        backend.add(ban(f"2001:db8:9::{i:x}"))
    assert "delete element" in committed_text(ns, backend)  # the usual path again
    again = setup(ns, set4="other4", set6="other6")  # a table with new sets: fresh ones
    assert ns.in_namespace(lambda: again.remove_strays(set())) == []
    for i in range(FRESH_BULK):
        again.add(ban(f"2001:db8:a::{i:x}"))
    assert "delete element" in committed_text(ns, again)


def test_a_restart_leaves_the_bans_in_place_alone_and_finds_strays_in_its_survey(ns: Netns):
    """Restored bans whose elements are in place with their ends are not written again (at
    100,000, an add+delete+add of every one); one whose end differs is; what the survey found
    that is no running ban is a stray."""
    before = setup(ns)
    for b in (ban("203.0.113.7", 600), ban("203.0.113.8", 600), ban("2001:db8::7", math.inf)):
        before.add(b)
    ns.in_namespace(before.commit)
    ns.run("nft", "add element inet bansink ban4 { 198.51.100.77 timeout 1h }")
    after = setup(ns)  # the restart: the table was kept
    ns.in_namespace(after.survey)
    now = time.monotonic()

    def restored(ip: str, left: float) -> Ban:
        return Ban(target=ip_address(ip), origin=Origin.JAIL, jail="roundcube", failures=6,
                   bantime=left, decided_at=now)

    for b in (restored("203.0.113.7", 599), restored("203.0.113.8", 7200),
              restored("2001:db8::7", math.inf)):
        after.add(b)
    text = committed_text(ns, after)
    assert "203.0.113.8" in text
    assert "203.0.113.7" not in text and "2001:db8::7" not in text  # in place: left alone
    assert ns.set_elements()["203.0.113.8"]["timeout"] == 7200
    keep = {("roundcube", ip_address(ip)) for ip in ("203.0.113.7", "203.0.113.8", "2001:db8::7")}
    strays = ns.in_namespace(lambda: after.remove_strays(keep))
    assert [(name, str(target)) for name, target in strays] == [("ban4", "198.51.100.77")]
    assert set(ns.set_elements()) == {"203.0.113.7", "203.0.113.8"}
    assert set(ns.set_elements(name="ban6")) == {"2001:db8::7"}
