"""The seeds' three setups on one proxy: a real rsyslogd on the mail host forwards Kerio-,
Kopano- and James-format lines to bansink (James's log4j2 file and Apache's error log followed
with imfile and sent over RELP by deploy/sources' own snippets, Kerio's events over TCP), and
each jail bans exactly its attackers, in its own set pair, on its own ports."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from lab import CLIENT4, PORT, PROXY4, PROXY4_ATK, RELP_PORT, SENDER4, Lab, Rsyslog
from support import Daemon, Listener, connects, wait_until

SNIPPETS = Path(__file__).parent.parent.parent / "deploy" / "sources"
FORGED = "203.0.113.66"
KERIO, KERIO_BELOW = CLIENT4, "203.0.113.20"
KOPANO, KOPANO_BELOW = "203.0.113.30", "203.0.113.31"
JAMES_RCPT, JAMES_AUTH = "203.0.113.40", "203.0.113.41"
JAMES_BELOW, JAMES_BELOW_AUTH = "203.0.113.42", "203.0.113.43"

CONFIG = f"""
[receiver]
senders = ["{SENDER4}/32"]
udp = []
tcp = ["{PROXY4}:{PORT}"]
relp = ["{PROXY4}:{RELP_PORT}"]

[jails.kerio]
sources = ["kerio"]
maxretry = 3
bantime = 1200
ports = "imap,smtp,imaps,smtps"

[jails.kopano]
sources = ["kopano"]
maxretry = 3
ports = "https"

[jails.james]
sources = ["james"]
maxretry = 2
findtime = "20m"
bantime = "120m"

[log]
format = "json"
"""


def kerio_lines() -> list[str]:
    now = datetime.now().strftime("%d/%b/%Y %H:%M:%S")
    forged = (f"[{now}] Attempt to deliver to unknown recipient <x@example.com>, from "
              f"<a@example.net>, IP address {FORGED}>, IP address {KERIO_BELOW}")
    return [
        f"[{now}] Relay attempt from IP address {KERIO_BELOW}, mail from <s@example.net> to "
        f"<v@example.org> rejected",
        forged,  # the sender address is typed by the client: the last address is Kerio's
        f"[{now}] IP address {FORGED} looks fine",  # no pattern: nothing
        f"[{now}] SMTP Spam attack detected from {KERIO}, client sent data before SMTP greeting",
        f"[{now}] IP address {KERIO} found in DNS blacklist SpamCop, mail from <a@example.net> "
        f"to <b@example.com> rejected",
        f"[{now}] Relay attempt from IP address {KERIO}, mail from <s@example.net> to "
        f"<v@example.org> rejected",
    ]


def kopano_lines() -> list[str]:
    def failed(client: str, user: str) -> str:
        return (f"[Sun Nov 22 10:00:00.000000 2026] [php7:notice] [pid 1234] [client "
                f"{client}:54321] Kopano WebApp user: {user}: authentication failure at MAPI, "
                f"referer: https://mail.example.com/webapp/")
    return [
        failed(KOPANO_BELOW, f"x [client {FORGED}:1] y"),
        failed(KOPANO_BELOW, f"alice from {FORGED}"),
        "[Sun Nov 22 10:00:01.000000 2026] [php7:notice] [pid 1234] [client 192.0.2.77:1] "
        "Kopano WebApp user: bob: logged in",
        *(failed(KOPANO, f"user{i}") for i in range(3)),
    ]


def james_lines() -> list[str]:
    head = "2026-11-22 10:00:00.000 +0100 - org.apache.james.protocols.smtp.core"

    def rcpt(ip: str, user: str) -> str:
        return (f"{head}.fastfail.AbstractValidRcptHandler [ip={ip}] - Rejected message. "
                f"Unknown user: {user}")

    def auth(local: str, ip: str) -> str:
        return (f"{head}.esmtp.AuthCmdHandler [ip=] - AUTH method LOGIN failed from "
                f"Username{{localPart={local}, domainPart=Optional[Domain :example.com]}}@{ip}")

    return [
        rcpt(JAMES_BELOW, f"[ip={FORGED}]@example.com"),
        auth(f"x}}@{FORGED} [ip={FORGED}]", JAMES_BELOW_AUTH),
        rcpt(JAMES_RCPT, "a@example.com"),
        auth("monitor", JAMES_AUTH),
        rcpt(JAMES_RCPT, "b@example.com"),
        auth("monitor", JAMES_AUTH),
    ]


def rsyslog_config(james_log: Path, apache_log: Path) -> str:
    """deploy/sources' James and Kopano snippets as shipped (their files, here; each loads
    imfile and omrelp, which rsyslog takes once), and the Kerio events rsyslog receives
    forwarded over TCP."""
    james = (SNIPPETS / "james-imfile-relp.conf").read_text().replace(
        "/opt/james/logs/james-server.log", str(james_log))
    kopano = (SNIPPETS / "kopano-apache-imfile-relp.conf").read_text().replace(
        "/var/log/apache2/error.log", str(apache_log))
    for module in ('module(load="imfile")', 'module(load="omrelp")'):
        assert module in kopano
        kopano = kopano.replace(module, "")
    assert f'target="{PROXY4}" port="{RELP_PORT}"' in james + kopano
    kerio = (f'action(type="omfwd" target="{PROXY4}" port="{PORT}" protocol="tcp" '
             f'TCP_Framing="octet-counted")')
    return "\n".join([james, kopano, kerio])


def append(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def followed(daemon: Daemon, path: Path, marker: str) -> None:
    """Wait until rsyslog's imfile follows `path`: lines written before it has the file open
    are skipped (freshStartTail), so append a line that matches nothing until one arrives."""
    def arrived() -> bool:
        append(path, [marker])
        before = daemon.stats()["received"].get("relp", 0)
        try:
            wait_until(lambda: daemon.stats()["received"].get("relp", 0) > before, 1.0)
        except AssertionError:
            return False
        return True
    wait_until(arrived, 20, f"rsyslog to follow {path.name}")


def set_of(lab: Lab, jail: str) -> set[str]:
    return set(lab.proxy.set_elements(name=f"ban4_{jail}"))


def test_rsyslog_forwarding_the_seeds_logs_bans_each_jails_attackers_on_its_ports(lab: Lab):
    lab.daemon = daemon = Daemon(lab.proxy, CONFIG, lab.tmp)
    james_log, apache_log = lab.tmp / "james-server.log", lab.tmp / "error.log"
    james_log.touch()
    apache_log.touch()
    rsyslog = Rsyslog(lab.sender, lab.tmp, rsyslog_config(james_log, apache_log))
    followed(daemon, james_log, "2026-11-22 10:00:00.000 +0100 - James started")
    followed(daemon, apache_log, "[Sun Nov 22 10:00:00.000000 2026] [core:notice] Kopano "
                                 "WebApp is here")
    append(james_log, james_lines())
    append(apache_log, kopano_lines())
    for line in kerio_lines():
        lab.sender.run("logger", "-n", "127.0.0.1", "-P", "5140", "--tcp", "--rfc3164",
                       "-t", "security", "-p", "mail.info", line)

    wait_until(lambda: KERIO in set_of(lab, "kerio") and KOPANO in set_of(lab, "kopano")
               and {JAMES_RCPT, JAMES_AUTH} <= set_of(lab, "james"), 20, "every jail's bans")
    # each path is ordered and its attackers come last: what came before was all seen
    assert set_of(lab, "kerio") == {KERIO}
    assert set_of(lab, "kopano") == {KOPANO}
    assert set_of(lab, "james") == {JAMES_RCPT, JAMES_AUTH}
    bans = sorted((b["jail"], b["ip"], b["count"], b["bantime"]) for b in daemon.lines("ban"))
    assert bans == [("james", JAMES_RCPT, 2, 7200.0), ("james", JAMES_AUTH, 2, 7200.0),
                    ("kerio", KERIO, 3, 1200.0), ("kopano", KOPANO, 3, 3600.0)]
    timeouts = {jail: {e["timeout"] for e in lab.proxy.set_elements(name=f"ban4_{jail}").values()}
                for jail in ("kerio", "kopano", "james")}
    assert timeouts == {"kerio": {1200}, "kopano": {3600}, "james": {7200}}
    stats = daemon.stats()
    assert stats["received"]["relp"] >= 12 and stats["received"]["tcp"] == 6

    # the Kerio ban closes the mail ports to its address, not the web server
    listener = Listener(lab.proxy, 25, 143, 80)
    try:
        assert [connects(lab.client, CLIENT4, PROXY4_ATK, port) for port in (25, 143, 80)] == \
            [False, False, True]
    finally:
        listener.close()
    rsyslog.stop()


def test_a_rate_limit_from_the_config_drops_the_fifth_connection_and_spares_the_senders(
        lab: Lab):
    Daemon(lab.proxy, CONFIG + '\n[ratelimit.smtp]\nports = "smtp"\nconnections = 4\n'
                               'window = "60s"\n', lab.tmp)
    listener = Listener(lab.proxy, 25)
    try:
        assert [connects(lab.client, CLIENT4, PROXY4_ATK, 25) for _ in range(5)] == \
            [True] * 4 + [False]
        assert all(connects(lab.sender, SENDER4, PROXY4, 25) for _ in range(6))  # a sender
    finally:
        listener.close()
    text = lab.proxy.run("nft", "list", "ruleset").stdout.decode()
    # the exempt: engine.ignoreip's default and the sender
    assert (f"tcp dport 25 ct state new ip saddr != {{ 127.0.0.0/8, {SENDER4} }} "
            f"add @ratelimit_smtp_4in60s_ip {{ ip saddr }} counter packets 1 ") in text
