"""The admin's commands against a running daemon: the real `bansink` command, the real control
socket, the real kernel sets in a namespace; and bans that survive a restart or a tampered
table."""

import json
import time

from lab import PORT, PROXY4, Lab, config, login_failed
from support import BIN, Daemon, wait_until

ATTACKER, OTHER, DIRECTOR = "203.0.113.7", "203.0.113.8", "203.0.113.50"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def fail(lab: Lab, ip: str, times: int, user: str = "bob") -> None:
    """`times` failed logins of `ip`, sent by the webmail host's logger over TCP."""
    path = lab.tmp / f"fail-{ip}-{time.monotonic_ns()}.txt"
    path.write_text("".join(login_failed(ip, user=f"{user}{i}") + "\n" for i in range(times)))
    lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--tcp", "--rfc3164",
                   "-t", "roundcube", "-f", str(path))


def bansink(lab: Lab, *args: str, check: bool = True, prefix: tuple[str, ...] = ()):
    result = lab.proxy.run(*prefix, str(BIN / "bansink"), *args, "--socket",
                           str(lab.daemon.control), check=False)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def ask(lab: Lab, *args: str) -> dict:
    return json.loads(bansink(lab, *args, "--json").stdout)


def banned(lab: Lab, name: str = "ban4") -> set[str]:
    return set(lab.proxy.set_elements(name=name))


def test_unban_lifts_at_once_and_the_address_is_banned_again_after_maxretry_more(lab: Lab):
    lab.start(maxretry=3)
    fail(lab, ATTACKER, 3)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the ban")
    bans = ask(lab, "bans")["bans"]
    assert [(b["target"], b["jail"], b["origin"], b["failures"]) for b in bans] == \
        [(ATTACKER, "roundcube", "jail", 3)]
    status = ask(lab, "status")["jails"]["roundcube"]
    assert (status["currently_banned"], status["total_banned"], status["total_failed"]) == (1, 1, 3)
    assert "Currently banned: 1" in bansink(lab, "status").stdout.decode()

    bansink(lab, "unban", ATTACKER)
    wait_until(lambda: banned(lab) == set(), 1, "the unban in the kernel within 1 s")
    fail(lab, ATTACKER, 2)
    wait_until(lambda: ask(lab, "status")["jails"]["roundcube"]["total_failed"] == 5, 10,
               "two more failures counted")
    assert banned(lab) == set()  # the failures before the unban do not count again
    fail(lab, ATTACKER, 1)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "banned again after maxretry more")


def test_an_allowed_address_is_never_banned_until_disallowed(lab: Lab):
    lab.start(maxretry=3)
    fail(lab, DIRECTOR, 3)
    wait_until(lambda: banned(lab) == {DIRECTOR}, 10, "the ban")
    out = bansink(lab, "allow", DIRECTOR, "--for", "30d", "--note", "director's hotel")
    assert DIRECTOR in out.stdout.decode()
    wait_until(lambda: banned(lab) == set(), 1, "unbanned within 1 s")
    fail(lab, DIRECTOR, 20)
    fail(lab, OTHER, 3)  # sent after: once OTHER is banned, DIRECTOR's lines were read
    wait_until(lambda: banned(lab) == {OTHER}, 10, "the other attacker's ban")
    explained = ask(lab, "explain", DIRECTOR)
    assert not explained["banned"]
    assert any("allow entry" in p and "director's hotel" in p for p in explained["protected_by"])
    allows = ask(lab, "allows")["allows"]
    assert [(a["target"], a["note"]) for a in allows] == [(DIRECTOR, "director's hotel")]

    bansink(lab, "disallow", DIRECTOR)
    fail(lab, DIRECTOR, 3)
    wait_until(lambda: banned(lab) == {OTHER, DIRECTOR}, 10, "banned once disallowed")


def test_explain_shows_the_exact_lines_that_caused_the_ban(lab: Lab):
    lab.start(maxretry=3)
    fail(lab, ATTACKER, 3, user="mallory")
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the ban")
    explained = wait_until(lambda: (e := ask(lab, "explain", ATTACKER))["bans"] and e, 10,
                           "the ban in the store")
    (ban,) = explained["bans"]
    assert (ban["jail"], ban["failures"], ban["lifted"]) == ("roundcube", 3, None)
    lines = [m["raw"] for m in ban["messages"]]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.endswith(login_failed(ATTACKER, user=f"mallory{i}"))
    assert {m["source"] for m in ban["messages"]} == {"roundcube"}
    text = bansink(lab, "explain", ATTACKER).stdout.decode()
    assert "BANNED" in text and "mallory2" in text
    history = ask(lab, "history", ATTACKER)["bans"]
    assert [b["id"] for b in history] == [ban["id"]]


def test_manual_bans_of_addresses_and_networks_close_every_port(lab: Lab):
    lab.start(maxretry=3)
    bansink(lab, "ban", ATTACKER, "--for", "2h", "--note", "seen in the web log")
    bansink(lab, "ban", "2001:db8:9::/48")
    wait_until(lambda: banned(lab, "ban4_manual") == {ATTACKER}, 1, "the manual ban")
    assert lab.proxy.set_elements(name="ban4_manual")[ATTACKER]["timeout"] == 7200
    assert lab.proxy.set_elements(name="net6_manual") == {"2001:db8:9::/48": {}}  # no timeout
    refused = bansink(lab, "ban", "192.0.2.2", check=False)  # the webmail host: a sender
    assert refused.returncode == 1 and "protected (sender" in refused.stderr.decode()
    bad = bansink(lab, "ban", "203.0.113.0/33", check=False)
    assert bad.returncode == 1 and "not an address or a network" in bad.stderr.decode()
    bansink(lab, "unban", "2001:db8:9::/48")
    wait_until(lambda: lab.proxy.set_elements(name="net6_manual") == {}, 1, "the unban")


def test_a_user_who_is_not_root_cannot_open_the_control_socket(lab: Lab):
    lab.start()
    result = bansink(lab, "bans", check=False, prefix=tuple(NOBODY))
    assert result.returncode == 1
    assert "Permission denied" in result.stderr.decode()


def test_a_restart_restores_exactly_the_running_bans_with_their_remaining_time(lab: Lab):
    daemon = lab.start(maxretry=3, bantime="60s", findtime="1h")
    fail(lab, ATTACKER, 3)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the jail's ban")
    bansink(lab, "ban", OTHER, "--for", "3s")  # over while bansink is stopped
    bansink(lab, "ban", DIRECTOR, "--for", "1h")
    bansink(lab, "unban", DIRECTOR)  # lifted: must not come back from the journal
    fail(lab, "203.0.113.9", 3)
    wait_until(lambda: banned(lab) == {ATTACKER, "203.0.113.9"}, 10, "the second jail ban")
    bansink(lab, "unban", "203.0.113.9")
    wait_until(lambda: ask(lab, "bans")["bans"] and banned(lab) == {ATTACKER}, 5, "settled")
    expected = lab.proxy.set_elements()[ATTACKER]["expires"]
    assert daemon.stop() == 0
    lab.proxy.run("nft", "add element inet bansink ban4 { 198.51.100.77 timeout 1h }")  # stray
    time.sleep(4)  # the manual 3 s ban ends while bansink is stopped
    waited = 4
    daemon = lab.restart(maxretry=3, bantime="60s", findtime="1h")
    wait_until(lambda: daemon.lines("nft_strays_removed"), 10, "the stray reported")
    assert banned(lab) == {ATTACKER}
    assert banned(lab, "ban4_manual") == set()
    assert abs(lab.proxy.set_elements()[ATTACKER]["expires"] - (expected - waited)) <= 2 + 1
    (stray,) = daemon.lines("nft_strays_removed")
    assert stray["elements"] == ["ban4 198.51.100.77"]
    assert [b["target"] for b in ask(lab, "bans")["bans"]] == [ATTACKER]
    assert daemon.lines("ban") == []  # restored, not banned anew


def test_a_ban_older_than_findtime_survives_a_restart(lab: Lab):
    daemon = lab.start(maxretry=3, bantime="1h", findtime="2s")
    fail(lab, ATTACKER, 3)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the ban")
    wait_until(lambda: ask(lab, "explain", ATTACKER)["bans"], 10, "the ban in the store")
    assert daemon.stop() == 0
    time.sleep(3)  # its messages are now older than findtime: the journal cannot rebuild it
    daemon = lab.restart(maxretry=3, bantime="1h", findtime="2s")
    wait_until(lambda: banned(lab) == {ATTACKER}, 5, "the ban restored from the store")
    assert 3600 - 30 <= lab.proxy.set_elements()[ATTACKER]["expires"] <= 3600


def test_a_flushed_set_is_refilled_within_5_seconds(lab: Lab):
    daemon = lab.start(maxretry=3)
    fail(lab, ATTACKER, 3)
    bansink(lab, "ban", OTHER)
    wait_until(lambda: banned(lab) == {ATTACKER} and banned(lab, "ban4_manual") == {OTHER},
               10, "the bans")
    lab.proxy.run("nft", "flush", "set", "inet", "bansink", "ban4")
    lab.proxy.run("nft", "flush", "set", "inet", "bansink", "ban4_manual")
    wait_until(lambda: banned(lab) == {ATTACKER} and banned(lab, "ban4_manual") == {OTHER},
               5, "the bans back within 5 s")
    rebuilt = daemon.lines("nft_table_rebuilt")
    assert rebuilt and "emptied" in rebuilt[-1]["problem"]


def test_a_repeat_offender_is_banned_longer_from_the_history_in_the_store(lab: Lab):
    text = config(maxretry=2, bantime="3s", findtime="1m").replace(
        "[jail]\n", '[jail]\n"bantime.increment" = true\n"bantime.maxtime" = "1h"\n')
    lab.daemon = Daemon(lab.proxy, text, lab.tmp)
    fail(lab, ATTACKER, 2)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the first ban")
    assert lab.proxy.set_elements()[ATTACKER]["timeout"] == 3
    wait_until(lambda: banned(lab) == set(), 10, "the first ban over")
    assert lab.daemon.stop() == 0
    lab.daemon = Daemon(lab.proxy, text, lab.tmp)  # what it remembers comes from the store
    fail(lab, ATTACKER, 2)
    wait_until(lambda: banned(lab) == {ATTACKER}, 10, "the second ban")
    assert lab.proxy.set_elements()[ATTACKER]["timeout"] == 6  # 2 x bantime
    (ban,) = lab.daemon.lines("ban")
    assert (ban["origin"], ban["bantime"]) == ("escalation", 6.0)
    (latest, first) = ask(lab, "history", ATTACKER)["bans"]
    assert (latest["escalation_step"], first["escalation_step"]) == (1, 0)
