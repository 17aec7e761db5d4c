"""What an attacker and a bad day found, each against the real daemon, real rsyslog and real
faults: forged quotes in a user name, identical failures in one second, a full disk, a damaged
or deleted journal."""

import shutil
import sqlite3
import stat
import subprocess
import tempfile
from pathlib import Path

from lab import PORT, PROXY4, RELP_PORT, Lab, Rsyslog, login_failed
from support import Daemon, namespaces, wait_until

OMRELP = ('module(load="omrelp")\n'
          f'action(type="omrelp" target="{PROXY4}" port="{RELP_PORT}" '
          'action.resumeRetryCount="-1" action.resumeInterval="1" queue.type="LinkedList")')


def rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM message").fetchone()[0]
    finally:
        db.close()


def test_a_user_name_with_escaped_quotes_never_chooses_the_banned_address(lab: Lab):
    # the plugin's client_ip is a trusted proxy here: before the fix, `#042` became a real
    # quote and the forged forwarded_for got 198.51.100.9 banned through real omrelp
    lab.start(maxretry=3, extra='[engine]\ntrusted_proxies = ["203.0.113.5/32"]\n')
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    forged = "x#042, forwarded_for=#042198.51.100.9#042, zz=#042"
    lines = [login_failed("203.0.113.5", user=forged) for _ in range(5)]
    lines += [login_failed("203.0.113.9", user="bob#042") for _ in range(3)]  # no evasion
    rsyslog.log_lines(lines, lab.tmp)
    wait_until(lambda: lab.daemon.stats()["received"].get("relp", 0) >= len(lines), 30,
               "all messages")
    wait_until(lambda: "203.0.113.9" in lab.proxy.set_elements(), 10, "the real client banned")
    assert set(lab.proxy.set_elements()) == {"203.0.113.9"}
    assert lab.daemon.stats()["outcomes"] == {"Ignored": 5, "Counted": 2, "Banned": 1}


def test_fifty_identical_failures_within_a_second_count_fifty_over_relp(lab: Lab):
    lab.start(maxretry=100)
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    rsyslog.log_lines([login_failed("203.0.113.50", user="admin")] * 50, lab.tmp)
    wait_until(lambda: lab.daemon.stats()["received"].get("relp", 0) >= 50, 30, "50 messages")
    stats = lab.daemon.stats()
    assert stats["outcomes"] == {"Counted": 50} and "relp_resend" not in stats["drops"]
    assert rows(lab.tmp / "journal.db") == 50


def send_tcp(lab: Lab, lines: list[str], name: str) -> None:
    path = lab.tmp / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--tcp", "--octet-count",
                   "--rfc3164", "-t", "roundcube", "-f", str(path), timeout=60)


def test_a_full_disk_is_logged_once_bans_go_on_and_writing_resumes_when_space_returns(lab: Lab):
    disk = lab.tmp / "disk"
    disk.mkdir()
    # a 1 MiB tmpfs in a mount namespace of the daemon's own
    mount = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec \"$@\""
    daemon = lab.start(
        maxretry=3, findtime="4s",
        extra=f'[journal]\npath = "{disk}/journal.db"\nretention = "4s"\n',
        prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"))
    in_daemon_mounts = ("nsenter", "-t", str(daemon.proc.pid), "-m")
    send_tcp(lab, [login_failed(f"2001:db8:ff::{i:x}", user=f"u{i}") for i in range(300)], "a")
    wait_until(lambda: daemon.stats()["journal_rows"] == 300, 20, "300 rows")
    subprocess.run([*in_daemon_mounts, "dd", "if=/dev/zero", f"of={disk}/filler", "bs=4k"],
                   check=False, capture_output=True)  # until the disk is full
    big = [login_failed(f"2001:db8:fe::{i:x}", user="x" * 200) for i in range(3000)]
    send_tcp(lab, big, "big")
    wait_until(lambda: daemon.lines("journal_failed"), 30, "a write to fail")
    # pruning the 300 rows (older than 4 s) needs space too: it fails, every second
    wait_until(lambda: daemon.stats()["journal_errors"] >= 4, 30, "failing prunes")
    send_tcp(lab, [login_failed("203.0.113.60", user="u")] * 3, "attack")
    wait_until(lambda: "203.0.113.60" in lab.proxy.set_elements(), 10, "a ban on a full disk")
    assert daemon.proc.poll() is None
    assert len(daemon.lines("journal_failed")) == 1  # logged once, not per batch
    assert not daemon.lines("journal_writing_again")
    # space returns: writing resumes by itself
    subprocess.run([*in_daemon_mounts, "rm", f"{disk}/filler"], check=True)
    before = daemon.stats()["journal_rows"]
    send_tcp(lab, [login_failed("203.0.113.61", user="v")], "after")
    wait_until(lambda: daemon.stats()["journal_rows"] > before, 20, "a row written again")
    assert daemon.lines("journal_writing_again")
    assert daemon.proc.poll() is None


def test_a_damaged_journal_at_start_is_moved_aside_and_bansink_starts(lab: Lab):
    (lab.tmp / "journal.db").write_bytes(b"this is not a database\n" * 1000)
    daemon = lab.start()
    [line] = daemon.lines("journal_recovered_from_damage")
    assert Path(line["moved_to"]).read_bytes().startswith(b"this is not a database")
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    rsyslog.log_lines([login_failed("203.0.113.70", user="u")] * 3, lab.tmp)
    wait_until(lambda: "203.0.113.70" in lab.proxy.set_elements(), 20, "a ban")
    wait_until(lambda: rows(lab.tmp / "journal.db") == 3, 10, "rows in the fresh journal")


def test_a_journal_damaged_or_deleted_while_running_is_replaced_and_relp_goes_on(lab: Lab):
    daemon = lab.start(maxretry=100)
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMRELP)
    path = lab.tmp / "journal.db"
    rsyslog.log_lines([login_failed("203.0.113.80", user=f"a{i}") for i in range(400)], lab.tmp)
    wait_until(lambda: rows(path) == 400, 30, "400 rows")
    path.unlink()  # deleted behind bansink's back: its acknowledged rows must survive
    wait_until(lambda: daemon.lines("journal_recovered_from_damage"), 10, "the deletion found")
    assert rows(path) == 400
    with path.open("r+b") as f:  # then damaged in place
        f.write(b"\xde\xad" * 50)
    wait_until(lambda: len(daemon.lines("journal_recovered_from_damage")) == 2, 10,
               "the damage found")
    assert ".damaged-" in daemon.lines("journal_recovered_from_damage")[1]["moved_to"]
    rsyslog.log_lines([login_failed("203.0.113.81", user=f"b{i}") for i in range(10)], lab.tmp)
    wait_until(lambda: daemon.stats()["received"].get("relp", 0) >= 410, 30, "more messages")
    wait_until(lambda: rows(path) == 10, 10, "acknowledged rows in the fresh file")
    assert daemon.proc.poll() is None


def test_a_flushed_ruleset_or_deleted_table_is_rebuilt_with_the_running_bans(lab: Lab):
    daemon = lab.start(bantime="1h")
    attackers = ["203.0.113.90", "203.0.113.91", "2001:db8:2::2"]
    send_tcp(lab, [login_failed(ip, user="u") for ip in attackers for _ in range(3)], "attack")
    wait_until(lambda: len(banned(lab)) == 3, 10, "3 bans")
    enforced = {*attackers[:2], "2001:db8:2::/64"}  # an IPv6 client is banned by its /64
    for how in (("flush", "ruleset"), ("delete", "table", "inet", "bansink")):
        lab.proxy.run("nft", *how)
        wait_until(lambda: banned(lab) == enforced, 5, f"bans back after nft {how}")
    assert len(daemon.lines("nft_table_rebuilt")) == 2
    assert daemon.stats()["bans"] == 3  # restored, not banned again
    chain = lab.proxy.nft_json("list", "chain", "inet", "bansink", "input")["nftables"]
    assert sum("rule" in item for item in chain) == 8  # the drop rules are back too


def banned(lab: Lab) -> set[str]:
    try:
        return {element for name in ("ban4", "ban6", "net6")
                for element in lab.proxy.set_elements(name=name)}
    except subprocess.CalledProcessError:  # no table (yet)
        return set()


NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def test_a_local_user_cannot_get_an_address_banned_nor_read_the_store(tmp_path):
    public = Path(tempfile.mkdtemp(prefix="bansink-test-"))  # not under root's 0700 tmp
    public.chmod(0o755)
    config = (f'[receiver]\nudp = ["127.0.0.1:{PORT}", "[::1]:{PORT}"]\n'
              f'tcp = ["127.0.0.1:{PORT}", "[::1]:{PORT}"]\nrelp = []\n'
              f'[engine]\nignoreip = []\n[jail]\nmaxretry = 2\n'
              f'[journal]\npath = "{public}/state/journal.db"\n[log]\nformat = "json"\n')
    try:
        with namespaces("local") as (ns,):
            daemon = Daemon(ns, config, tmp_path,
                            prefix=("sh", "-c", 'umask 000 && exec "$@"', "sh"))

            def logger(*who: str, ip: str, transport: str, host: str = "127.0.0.1") -> None:
                ns.run(*who, "logger", "-n", host, "-P", str(PORT), transport, "--rfc3164",
                       "-t", "roundcube", login_failed(ip), check=False)

            for transport in ("--udp", "--tcp"):
                for host in ("127.0.0.1", "::1"):
                    for _ in range(2):
                        logger(*NOBODY, ip="203.0.113.100", transport=transport, host=host)
            logger(ip="203.0.113.101", transport="--udp")  # root (rsyslog) may send
            logger(ip="203.0.113.101", transport="--tcp")
            wait_until(lambda: "203.0.113.101" in ns.set_elements(), 10, "root's ban")
            assert set(ns.set_elements()) == {"203.0.113.101"}
            assert daemon.stats()["received"] == {"udp": 1, "tcp": 1}
            state = public / "state"
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            for f in state.iterdir():
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            read = ns.run(*NOBODY, "cat", str(state / "journal.db"), check=False)
            assert read.returncode != 0 and b"Permission denied" in read.stderr
            daemon.stop()
    finally:
        shutil.rmtree(public)
