"""SIGHUP on a running bansink process: under RELP load from rsyslog's real omrelp no message is
lost or counted twice, open connections go on, and listeners follow the config."""

import re
import signal
import socket
import sqlite3
import subprocess
from collections import Counter

from lab import PORT, PROXY4, RELP_PORT, SENDER4, Lab, Rsyslog
from support import Daemon, wait_until

OMRELP = ('module(load="omrelp")\n'
          f'action(type="omrelp" target="{PROXY4}" port="{RELP_PORT}" '
          'action.resumeRetryCount="-1" action.resumeInterval="1" queue.type="LinkedList")')

SECOND_PORT = RELP_PORT + 2
MESSAGES = 20_000
RATE = 2_500  # messages a second: the stream lasts 8 s, every reload lands inside it

FEEDER = r"""
import socket, sys, time
count, rate, port, prefix = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.create_connection(("127.0.0.1", port))
start, batch = time.monotonic(), 50
for first in range(0, count, batch):
    stamp = time.strftime("%b %e %H:%M:%S").encode()
    s.sendall(b"".join(
        b'<36>%s webmail roundcube: Login failed: client_ip="2001:db8:ff::%x", '
        b'host="imap.example", user="%s%d", code=0\n' % (stamp, i, prefix.encode(), i)
        for i in range(first, min(first + batch, count))))
    late = start + (first + batch) / rate - time.monotonic()
    if late > 0:
        time.sleep(late)
s.close()
"""


def feed(lab: Lab, count: int, port: int, prefix: str) -> subprocess.Popen:
    """`count` numbered login failures (user PREFIXn) at RATE a second into the sender's
    rsyslog listening on `port`."""
    return lab.sender.popen("python3", "-c", FEEDER, str(count), str(RATE), str(port), prefix,
                            stderr=subprocess.PIPE)


def config(lab: Lab, *, maxretry: str = "3", relp: tuple[str, ...] = (),
           tcp: tuple[int, ...] = (PORT,)) -> str:
    """The lab's sender, one RELP listener (plus `relp`), TCP on `tcp`; the journal and the
    control socket where support.Daemon puts them (a reload must not move them). IPv6 clients
    are counted by address: the feeder's distinct addresses share one /64 and must each stay
    one failure."""
    listens = [f"0.0.0.0:{RELP_PORT}", *relp]
    return f"""
[receiver]
senders = ["{SENDER4}/32"]
udp = []
tcp = {[f"0.0.0.0:{port}" for port in tcp]!r}
relp = {listens!r}
[jail]
maxretry = {maxretry}
findtime = "10m"
ipv6_prefix = 128
[log]
format = "json"
[journal]
path = "{lab.tmp}/journal.db"
[control]
socket = "{lab.tmp}/control/control.sock"
""".replace("'", '"')


def omrelp_sender(lab: Lab, name: str, imtcp: int, target: int) -> None:
    """A private rsyslogd in the sender namespace (as lab.Rsyslog, with its own work directory
    and TCP input port), forwarding with omrelp to the proxy's port `target`. Its queue holds
    what waits while the listener is gone: rsyslog's default (1,000 messages) drops a message
    when it stays full for 2 s (`queue FULL - waiting 2000ms to drain`, seen in its debug log)."""
    work = lab.tmp / name
    work.mkdir()
    conf = work / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{imtcp}")
module(load="omrelp")
action(type="omrelp" target="{PROXY4}" port="{target}" action.resumeRetryCount="-1"
       action.resumeInterval="1" queue.type="LinkedList" queue.size="100000")
""")
    proc = lab.sender.popen("rsyslogd", "-n", "-f", str(conf), "-i", str(work / "pid"),
                            stdout=subprocess.DEVNULL, stderr=(work / "err").open("wb"))
    wait_until(lambda: proc.poll() is not None or f":{imtcp}".encode() in
               lab.sender.run("ss", "-Hltn").stdout, 10, "rsyslogd to listen")
    assert proc.poll() is None, (work / "err").read_text()


def sighup(daemon: Daemon, text: str) -> dict:
    """Write the config, send SIGHUP, return the `reloaded` or `reload_failed` line it gave."""
    def answers() -> list[dict]:
        return [line for line in daemon.lines()
                if line.get("event") in ("reloaded", "reload_failed")]

    before = len(answers())
    daemon.config_path.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    return wait_until(lambda: answers()[before:], 15, "the reload's answer")[0]


def journal(lab: Lab) -> list[bytes]:
    db = sqlite3.connect(lab.tmp / "journal.db")
    try:
        return [raw for (raw,) in db.execute("SELECT raw FROM message")]
    finally:
        db.close()


def rows(lab: Lab) -> int:
    db = sqlite3.connect(lab.tmp / "journal.db")
    try:
        return db.execute("SELECT count(*) FROM message").fetchone()[0]
    finally:
        db.close()


def answer(lab: Lab, port: int) -> str:
    """A TCP connect from the sender to the proxy's port: "open" or "refused"."""
    def attempt() -> str:
        try:
            socket.create_connection((PROXY4, port), timeout=5).close()
        except ConnectionRefusedError:
            return "refused"
        return "open"
    return lab.sender.in_namespace(attempt)


def relp_sessions(lab: Lab) -> list[str]:
    """rsyslog's established connections to bansink's first RELP port (local ends included)."""
    out = lab.sender.run("ss", "-Htn", "state", "established",
                         f"( dport = :{RELP_PORT} )").stdout.decode()
    return sorted(line.split()[-2] for line in out.splitlines())


def test_sighup_under_omrelp_load_loses_no_message_and_counts_none_twice(lab: Lab):
    daemon = lab.daemon = Daemon(lab.proxy, config(lab), lab.tmp)
    Rsyslog(lab.sender, lab.tmp, OMRELP)
    feeder = feed(lab, MESSAGES, 5140, "n")
    wait_until(lambda: rows(lab) >= 500, 30, "the stream to flow")
    (session,) = relp_sessions(lab)
    guard = ("nft", "list", "chain", "inet", "bansink", "local_senders")
    during: list[int] = []

    def step(text: str) -> dict:
        mark = rows(lab)
        wait_until(lambda: rows(lab) >= mark + 1500, 30, "messages between reloads")
        line = sighup(daemon, text)
        during.append(rows(lab))
        return line

    assert step(config(lab))["needs_restart"] == []  # nothing changed: nothing moves
    second = f"0.0.0.0:{SECOND_PORT}"
    assert str(SECOND_PORT) not in lab.proxy.run(*guard).stdout.decode()
    added = step(config(lab, maxretry="4", relp=(second,)))
    assert added["event"] == "reloaded"
    assert set(added["applied"]) == {"receiver.relp", "jail.maxretry"}
    assert answer(lab, SECOND_PORT) == "open"
    assert str(SECOND_PORT) in lab.proxy.run(*guard).stdout.decode()  # local users kept out
    bad = step(config(lab, maxretry='"many"', relp=(second,)))
    assert bad["event"] == "reload_failed" and "jail.maxretry" in bad["error"]
    unbound = step(config(lab, relp=(f"192.0.2.99:{SECOND_PORT}",)))  # not on this host
    assert unbound["event"] == "reload_failed"
    assert unbound["error"].startswith(f"receiver.relp: cannot listen on relp "
                                       f"192.0.2.99:{SECOND_PORT}: ")
    assert answer(lab, SECOND_PORT) == "open"  # the refused reload changed nothing
    removed = step(config(lab))
    assert set(removed["applied"]) == {"receiver.relp", "jail.maxretry"}
    assert answer(lab, SECOND_PORT) == "refused"

    assert feeder.wait(60) == 0, feeder.stderr.read() if feeder.stderr else ""
    wait_until(lambda: rows(lab) >= MESSAGES, 60, "every message in the journal")
    assert all(0 < at < MESSAGES for at in during), during  # each reload under load
    users = Counter(re.search(rb'user="n(\d+)"', raw)[1] for raw in journal(lab))
    assert len(users) == MESSAGES and set(users.values()) == {1}  # 0 lost, 0 twice
    stats = daemon.stats()
    assert stats["received"] == {"relp": MESSAGES}
    assert stats["outcomes"] == {"Counted": MESSAGES}
    assert "relp_resend" not in stats["drops"]
    assert relp_sessions(lab) == [session]  # omrelp's session was never broken


def test_a_tcp_connection_open_across_sighup_keeps_delivering_and_listeners_follow(lab: Lab):
    second = PORT + 1
    daemon = lab.daemon = Daemon(lab.proxy, config(lab), lab.tmp)

    def line(n: int) -> bytes:
        return (b'<36>Aug 22 10:00:00 webmail roundcube: Login failed: client_ip="203.0.113.%d"'
                b', host="imap.example", user="t%d", code=0\n' % (n, n))

    def received() -> int:
        return daemon.stats()["received"].get("tcp", 0)

    def connect(port: int) -> socket.socket:
        return lab.sender.in_namespace(lambda: socket.create_connection((PROXY4, port), 5))

    kept = connect(PORT)
    kept.sendall(line(1))
    wait_until(lambda: received() == 1, 10, "the first line")
    assert sighup(daemon, config(lab, tcp=(PORT, second)))["event"] == "reloaded"
    kept.sendall(line(2))  # open across the reload: still delivering
    moved = connect(second)  # the added listener accepts
    moved.sendall(line(3))
    wait_until(lambda: received() == 3, 10, "lines on both")
    assert sighup(daemon, config(lab, tcp=(PORT,)))["event"] == "reloaded"
    moved.settimeout(5)
    assert moved.recv(1) == b""  # told the listener is gone (a FIN) ...
    moved.sendall(line(4))  # ... and what was already on its way is still taken
    wait_until(lambda: received() == 4, 10, "the line in flight")
    moved.close()
    assert answer(lab, second) == "refused"
    kept.sendall(line(5))
    wait_until(lambda: received() == 5, 10, "the kept connection, after both reloads")
    kept.close()
    # TCP rows may wait journal.unacknowledged_interval for company
    wait_until(lambda: rows(lab) == 5, 10, "every row in the journal")


def test_a_removed_relp_listener_ends_omrelp_sessions_with_nothing_lost_or_counted_twice(
        lab: Lab):
    """omrelp's session to a listener a reload removes is answered and told `serverclose`;
    rsyslog keeps what it could not send and, once the listener is back, resends what was
    never answered: each message still arrives exactly once."""
    count = 10_000
    second = f"0.0.0.0:{SECOND_PORT}"
    daemon = lab.daemon = Daemon(lab.proxy, config(lab, relp=(second,)), lab.tmp)
    omrelp_sender(lab, "rsyslog-second", 5141, SECOND_PORT)
    feeder = feed(lab, count, 5141, "m")
    wait_until(lambda: rows(lab) >= 2000, 30, "the stream to flow")
    removed = sighup(daemon, config(lab))
    assert removed["event"] == "reloaded" and removed["applied"] == ["receiver.relp"]
    at_removal = rows(lab)
    assert answer(lab, SECOND_PORT) == "refused"
    assert feeder.wait(60) == 0
    assert rows(lab) < count  # the rest waits in rsyslog's queue
    assert sighup(daemon, config(lab, relp=(second,)))["event"] == "reloaded"
    wait_until(lambda: rows(lab) >= count, 60, "every message in the journal")
    users = Counter(re.search(rb'user="m(\d+)"', raw)[1] for raw in journal(lab))
    assert len(users) == count and set(users.values()) == {1}, at_removal
    stats = daemon.stats()
    assert stats["received"]["relp"] - stats["drops"].get("relp_resend", 0) == count
    assert stats["outcomes"] == {"Counted": count}
