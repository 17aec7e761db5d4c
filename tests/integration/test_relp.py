"""RELP against rsyslog's real omrelp, a SIGKILL mid-stream, and a hostile RELP client."""

import json
import sqlite3
import subprocess
import textwrap

from lab import PROXY4, RELP_PORT, Lab, Rsyslog, login_failed
from support import wait_until

OMRELP = ('module(load="omrelp")\n'
          f'action(type="omrelp" target="{PROXY4}" port="{RELP_PORT}" '
          'action.resumeRetryCount="-1" action.resumeInterval="1" queue.type="LinkedList")')


def journal_counts(lab: Lab) -> tuple[int, int]:
    db = sqlite3.connect(lab.tmp / "journal.db")
    try:
        return db.execute("SELECT count(*), count(DISTINCT digest) FROM message").fetchone()
    finally:
        db.close()


def test_omrelp_messages_arrive_exactly_once_and_the_right_ips_are_banned(lab: Lab):
    lab.start()
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    banned = [f"203.0.113.{i}" for i in range(1, 21)]
    below = [f"198.51.100.{i}" for i in range(10, 70)]
    lines = [login_failed(ip, user=f"u{n}") for n in range(2) for ip in below]
    lines += [login_failed(ip, user=f"u{n}") for n in range(3) for ip in banned]
    rsyslog.log_lines(lines, lab.tmp)
    wait_until(lambda: lab.daemon.stats()["received"].get("relp", 0) >= len(lines), 30,
               "all RELP messages")
    stats = lab.daemon.stats()
    assert stats["received"] == {"relp": len(lines)}
    assert stats["outcomes"] == {"Counted": 2 * 60 + 2 * 20, "Banned": 20}
    wait_until(lambda: set(lab.proxy.set_elements()) == set(banned), 10, "20 bans")
    assert journal_counts(lab) == (len(lines), len(lines))


def test_sigkill_mid_stream_loses_nothing_and_counts_each_message_once(lab: Lab):
    lab.start()
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    attacker = "203.0.113.77"  # two failures before the kill, one after: banned across it
    filler = [login_failed(f"2001:db8:ff::{i:x}", user=f"f{i}") for i in range(3000)]
    first = [login_failed(attacker, "a1"), login_failed(attacker, "a2"), *filler[:1500]]
    second = [*filler[1500:], login_failed(attacker, "a3")]
    rsyslog.log_lines(first, lab.tmp)
    wait_until(lambda: journal_counts(lab)[0] >= 600, 30, "part of the stream on disk")
    lab.daemon.kill()  # mid-stream: rsyslog still has unanswered frames in flight
    killed_at = journal_counts(lab)[0]
    assert killed_at < len(first) + len(second)
    daemon = lab.restart()
    replayed = daemon.lines("replayed")[0]
    assert replayed["rows"] == killed_at
    rsyslog.log_lines(second, lab.tmp)
    total = len(first) + len(second)
    wait_until(lambda: journal_counts(lab)[0] >= total, 60, "the whole stream on disk")
    assert journal_counts(lab) == (total, total)  # every message once, no double counting
    wait_until(lambda: attacker in lab.proxy.set_elements(), 10, "attacker banned after restart")
    assert set(lab.proxy.set_elements()) == {attacker}


HOSTILE_CLIENT = textwrap.dedent(f"""
    import json, socket
    OFFERS = b"relp_version=0\\ncommands=syslog"
    OPEN = b"1 open %d %s" % (len(OFFERS), OFFERS)
    MSG = b"<38>Aug 22 10:00:00 web roundcube: hello"
    def session(*frames, wait=True):
        s = socket.create_connection(({PROXY4!r}, {RELP_PORT}), timeout=5)
        for f in frames:
            s.sendall(f)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                return data.decode(errors="replace"), "closed"
            data += chunk
            if not wait:
                break
        return data.decode(errors="replace"), "open"
    good = socket.create_connection(({PROXY4!r}, {RELP_PORT}), timeout=5)
    good.sendall(OPEN + b"\\n")
    good.recv(4096)
    results = {{
        "syslog_before_open": session(b"1 syslog %d %s\\n" % (len(MSG), MSG)),
        "bad_txnr": session(OPEN + b"\\n", b"x syslog 3 abc\\n"),
        "oversized": session(OPEN + b"\\n", b"2 syslog 999999999 " + b"a" * 1000),
        "out_of_order": session(OPEN + b"\\n", b"5 syslog %d %s\\n" % (len(MSG), MSG)),
        "datalen_lies": session(OPEN + b"\\n", b"2 syslog 10 abc\\n3 close 0\\n"),
        "no_trailer": session(OPEN + b"\\n", b"2 syslog 3 abcX"),
    }}
    s = socket.create_connection(({PROXY4!r}, {RELP_PORT}), timeout=2)
    s.sendall(OPEN + b"\\n" + b"2 starttls 0\\n" + b"3 syslog %d %s\\n" % (len(MSG), MSG))
    data = b""
    while data.count(b"rsp") < 3:
        data += s.recv(4096)
    results["unknown_command_then_syslog"] = (data.decode(), "open")
    good.sendall(b"2 syslog %d %s\\n" % (len(MSG), MSG))
    results["other_session_unaffected"] = (good.recv(4096).decode(), "open")
    results["fresh_connection"] = session(OPEN + b"\\n", wait=False)
    print(json.dumps(results))
""")


def test_malformed_relp_frames_get_500_or_a_close_and_hurt_no_other_session(lab: Lab):
    lab.start()
    out = json.loads(lab.sender.run("python3", "-c", HOSTILE_CLIENT, timeout=60).stdout)
    assert "1 rsp 20 500 session not open" in out["syslog_before_open"][0]
    assert out["syslog_before_open"][1] == "closed"
    for case in ("bad_txnr", "datalen_lies", "no_trailer"):
        assert out[case][1] == "closed", case
    assert "2 rsp" in out["oversized"][0] and "500" in out["oversized"][0]
    assert out["oversized"][1] == "closed"
    assert "5 rsp" in out["out_of_order"][0] and "out of sequence" in out["out_of_order"][0]
    assert out["out_of_order"][1] == "closed"
    replies = out["unknown_command_then_syslog"][0]
    assert "2 rsp 25 500 command not supported" in replies and "3 rsp 6 200 OK" in replies
    assert out["other_session_unaffected"][0] == "2 rsp 6 200 OK\n"
    assert out["fresh_connection"][0].startswith("1 rsp ") and "relp_version=0" in out[
        "fresh_connection"][0]
    drops = lab.daemon.stats()["drops"]
    assert drops["relp_rejected"] >= 3 and drops["relp_framing_error"] >= 4
    assert lab.daemon.proc.poll() is None


RESEND_CLIENT = textwrap.dedent(f"""
    import socket, sys
    OFFERS = b"relp_version=0\\ncommands=syslog"
    MSG = sys.argv[1].encode()
    s = socket.create_connection(({PROXY4!r}, {RELP_PORT}), timeout=10)
    s.sendall(b"1 open %d %s\\n" % (len(OFFERS), OFFERS))
    s.sendall(b"2 syslog %d %s\\n" % (len(MSG), MSG))
    data = b""
    while b"2 rsp" not in data:
        data += s.recv(4096)
    print(data.decode().splitlines()[-1])
""")


def test_resent_frames_are_answered_but_not_counted_again_even_across_a_restart(lab: Lab):
    lab.start()
    message = ("<38>2026-08-22T10:00:00+00:00 webmail roundcube: "
               + login_failed("203.0.113.9", "resent"))

    def send() -> str:
        return lab.sender.run("python3", "-c", RESEND_CLIENT, message).stdout.decode().strip()

    assert send() == "2 rsp 6 200 OK"
    assert send() == "2 rsp 6 200 OK"  # the same bytes on a new connection: a resend
    stats = lab.daemon.stats()
    assert stats["outcomes"] == {"Counted": 1} and stats["drops"] == {"relp_resend": 1}
    lab.daemon.kill()
    daemon = lab.restart()
    assert send() == "2 rsp 6 200 OK"  # known from the journal after the restart
    stats = daemon.stats()
    assert stats["drops"] == {"relp_resend": 1} and stats["received"] == {"relp": 1}
    assert journal_counts(lab) == (1, 1)


def test_shutdown_tells_open_relp_sessions_serverclose(lab: Lab):
    lab.start()
    script = textwrap.dedent(f"""
        import socket, sys
        offers = b"relp_version=0\\ncommands=syslog"
        s = socket.create_connection(({PROXY4!r}, {RELP_PORT}), timeout=20)
        s.sendall(b"1 open %d %s\\n" % (len(offers), offers))
        data = b""
        while b"commands=syslog" not in data:
            data += s.recv(4096)
        print("open", flush=True)
        rest = b""
        while chunk := s.recv(4096):
            rest += chunk
        print(rest.decode(), flush=True)
    """)
    client = lab.sender.popen("python3", "-c", script, stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "open"
    assert lab.daemon.stop() == 0
    assert client.stdout.read().strip() == "0 serverclose 0"
    assert client.wait(10) == 0
