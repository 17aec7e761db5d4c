"""bansink end-to-end benchmark (not a test). Run as root from the checkout:

    .venv/bin/python bench/bench.py            # all phases, about a minute
    .venv/bin/python bench/bench.py --quick    # smaller counts

Everything runs inside a network namespace this script creates and deletes: a real `bansink run`
(nftables backend) listening on that namespace's loopback, senders in this process on sockets
made inside the namespace. Phases:
  udp     paced at --udp-rate for --udp-count datagrams, then an unpaced burst: received, lost
  tcp     --tcp-count octet-counted frames on one connection, each a distinct IPv6 client, as
          fast as bansink reads them: msg/s through parse, count and decide; then the daemon's
          RSS with that many tracked addresses
  latency --bans triggering messages, one at a time: time from send to the element appearing
          in the kernel set (seen through `nft monitor`), p50/p99
  burst   --burst-count octet-counted frames in one burst on one connection, distinct IPv6
          filler with --burst-attackers attackers' lines spread through it: for each attacker,
          the time from its last line handed to the socket to its element in the kernel set
          (time-to-ban: first attacker, min, p50, p95, max), and the daemon's own decision ->
          commit latency_ms. The sender writes faster than bansink reads: time-to-ban includes
          the wait in the socket buffers, which grows along the burst
  relp    rsyslog (imfile -> omrelp) into bansink, a pipelining client into bansink, the same
          rsyslog sender into rsyslog's own imrelp -> file (its lines counted as they are
          written, reading only what is new every 20 ms), and a restart replaying a journal
The journal is on (the default) unless --no-journal (udp, tcp, latency, burst; not relp).
Jails count IPv6 clients by /64 (the default), so bans are prefix elements; --ipv6-prefix 128
bans each address (as trees before prefix bans did: their config has no such key).
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

BIN = Path(sys.executable).parent
PORT = 5514
LINE = ('<38>Aug 22 10:00:00 webmail roundcube: Login failed: client_ip="{ip}", '
        'host="imap.example", user="bench", code=0')


T = TypeVar("T")
NEVER = 1000  # jail.maxretry's upper bound: no client sends that often here, so nothing bans


def client_ip(i: int) -> str:
    return str(ipaddress.ip_address(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"))


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.ns = f"bskbench{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        self.tmp = tmp
        self.inside = ThreadPoolExecutor(1, initializer=self._enter)
        self.proc: subprocess.Popen | None = None

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        assert libc.setns(fd, 0x40000000) == 0, "setns"
        os.close(fd)

    def socket(self, kind: int) -> socket.socket:
        return self.inside.submit(socket.socket, socket.AF_INET, kind).result()

    no_journal = False
    """--no-journal: the udp, tcp, latency and burst phases run without the journal."""
    ipv6_prefix: int | None = None
    """--ipv6-prefix: written into the jail's config when given (else the default, 64)."""

    def start(self, maxretry: int, journal: Path | None = None, *,
              durable: bool = False, jails: str | None = None, extra: str = "") -> None:
        """A daemon with a fresh journal (or the one given, e.g. to time its replay); none with
        --no-journal unless `durable` (RELP's figures are with durability). `jails`: TOML
        `[jails.NAME]` sections instead of the single `[jail]`; `extra`: more TOML sections
        (e.g. `[control]`)."""
        self.starts = getattr(self, "starts", 0) + 1
        path: Path | str = journal or self.tmp / f"journal-{self.starts}.db"
        if self.no_journal and not durable:
            path = ""
        config = self.tmp / "bench.toml"
        config.write_text(f"""
[receiver]
udp = ["127.0.0.1:{PORT}"]
tcp = ["127.0.0.1:{PORT}"]
relp = ["127.0.0.1:20514"]
udp_receive_buffer = 33554432
[journal]
path = "{path}"
{jails or self._jail(maxretry)}[engine]
max_tracked = 1000000
[log]
format = "json"
{extra}""")
        self.log = self.tmp / f"bansink-{maxretry}.log"
        self.proc = proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(BIN / "bansink"), "run", "--config", str(config)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        # replay of a full store included; a daemon that exits (a refused config) fails at once
        self.wait(lambda: self.events("started") or proc.poll() is not None, 300)
        if proc.poll() is not None:
            raise SystemExit(f"bench: bansink exited: {self.log.read_text()[-2000:]}")

    def element_of(self, ip: str) -> str:
        """The set element a ban of `ip` shows up as: its /64 (the jails' default
        `ipv6_prefix`; each client_ip is in a /64 of its own), or the address with
        --ipv6-prefix 128."""
        if self.ipv6_prefix == 128:
            return ip
        return str(ipaddress.ip_network(f"{ip}/{self.ipv6_prefix or 64}", strict=False))

    def _jail(self, maxretry: int) -> str:
        prefix = f"ipv6_prefix = {self.ipv6_prefix}\n" if self.ipv6_prefix is not None else ""
        return f'[jail]\nmaxretry = {maxretry}\nfindtime = "1h"\nbantime = "1h"\n{prefix}'

    def stop(self, keep_table: bool = False) -> None:
        """SIGTERM the daemon; then delete its nft table unless `keep_table` (a restart that
        finds its bans still in the kernel)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None
        if not keep_table:
            subprocess.run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet",
                            "bansink"], check=False, capture_output=True)

    def close(self) -> None:
        self.stop()
        self.inside.shutdown()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)

    def events(self, name: str) -> list[dict]:
        out = []
        for raw in self.log.read_text().splitlines():
            if f'"{name}"' in raw:
                entry = json.loads(raw)
                if entry.get("event") == name:
                    out.append(entry)
        return out

    @staticmethod
    def wait(cond: Callable[[], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while not (value := cond()):
            if time.monotonic() > deadline:
                raise TimeoutError("bench: condition not met")
            time.sleep(0.02)
        return value

    def stats(self) -> dict:
        """Ask the daemon for its counters (SIGUSR1)."""
        before = len(self.events("stats"))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        return self.wait(lambda: self.events("stats")[before:], 10)[-1]

    def received(self) -> int:
        return sum(self.stats()["received"].values())

    def settle(self) -> int:
        last, same_since = -1, time.monotonic()
        while True:
            now = self.received()
            if now != last:
                last, same_since = now, time.monotonic()
            elif time.monotonic() - same_since > 0.5:
                return now
            time.sleep(0.1)

    def rss_mib(self) -> tuple[float, float]:
        assert self.proc is not None
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def udp_phase(b: Bench, count: int, rate: int) -> dict:
    b.start(maxretry=NEVER)
    sock = b.socket(socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", PORT))
    messages = [LINE.format(ip=client_ip(i)).encode() for i in range(count)]
    result: dict[str, Any] = {}
    for label, pace in (("paced", rate), ("burst", None)):
        base = b.received()
        t0 = time.perf_counter()
        batch = 100
        for i in range(0, count, batch):
            for m in messages[i : i + batch]:
                try:
                    sock.send(m)
                except BlockingIOError:
                    pass
            if pace:
                ahead = (i + batch) / pace - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        sent_s = time.perf_counter() - t0
        got = b.settle() - base
        result[label] = {"sent": count, "send_rate": round(count / sent_s),
                         "received": got, "lost": count - got,
                         "loss_pct": round(100 * (count - got) / count, 2)}
    sock.close()
    result["peak_rss_mib"] = round(b.rss_mib()[1])
    b.stop()
    return result


def send_tcp(b: Bench, messages: list[bytes]) -> float:
    """The messages octet-counted on one TCP connection, as fast as bansink reads them: the
    seconds until the daemon has received them all. The frames are built before the clock
    starts (the sender must not be the bound)."""
    frames = [b"%d %s" % (len(m), m) for m in messages]
    chunks = [b"".join(frames[i : i + 2000]) for i in range(0, len(frames), 2000)]
    del frames
    sock = b.socket(socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", PORT))
    t0 = time.perf_counter()
    for chunk in chunks:
        sock.sendall(chunk)
    sock.close()
    b.wait(lambda: b.received() >= len(messages), 600)
    return time.perf_counter() - t0


def tcp_phase(b: Bench, count: int) -> dict:
    b.start(maxretry=NEVER)
    rss_idle = b.rss_mib()[0]
    elapsed = send_tcp(b, [LINE.format(ip=client_ip(i)).encode() for i in range(count)])
    rss, hwm = b.rss_mib()
    stats = b.events("stats")[-1]
    b.stop()
    return {"messages": count, "seconds": round(elapsed, 2), "msg_per_s": round(count / elapsed),
            "tracked": stats["tracked"], "rss_idle_mib": round(rss_idle),
            "rss_mib": round(rss), "peak_rss_mib": round(hwm),
            "journal_skipped_at_end": stats.get("journal_skipped"),
            "journal_pending_at_end": stats.get("journal_pending")}


class SetMonitor:
    """`nft monitor new elements` in the namespace: when each element (an address, or a
    prefix such as 2001:db8:1::/64) entered a set (perf_counter, taken when its line is
    read)."""

    def __init__(self, b: Bench) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", b.ns, "nft", "monitor", "new", "elements"],
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # let nft monitor subscribe before the first ban (a start-up wait only)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "timeout 1h" in line:
                at = time.perf_counter()
                with self.cond:
                    for token in line.replace("{", " ").replace("}", " ").split():
                        if token.startswith("2001:db8:"):
                            self.seen.setdefault(token.rstrip(","), at)
                    self.cond.notify_all()

    def wait_for(self, ips: set[str], timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: ips <= self.seen.keys(), timeout=timeout):
                missing = sorted(ips - self.seen.keys())
                raise TimeoutError(f"{len(missing)} bans not seen, e.g. {missing[:3]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def latency_phase(b: Bench, bans: int) -> dict:
    b.start(maxretry=1)
    monitor = SetMonitor(b)
    sock = b.socket(socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", PORT))
    latencies = []
    for i in range(bans):
        ip = client_ip(0xFFFF0000 + i)
        t0 = time.perf_counter()
        sock.send(LINE.format(ip=ip).encode())
        monitor.wait_for({b.element_of(ip)}, 5)
        latencies.append((monitor.seen[b.element_of(ip)] - t0) * 1000)
    monitor.stop()
    b.stop()
    latencies.sort()
    return {"bans": bans, "p50_ms": round(latencies[len(latencies) // 2], 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
            "max_ms": round(latencies[-1], 1)}


def burst_phase(b: Bench, count: int, attackers: int, maxretry: int = 3) -> dict:
    """One burst on one connection, as a busy rsyslog forwards: distinct filler clients with the
    attackers' lines spread through it. Time-to-ban: from the attacker's last line handed to
    the socket (sendall of its chunk returned) to its element in the kernel set."""
    b.start(maxretry=maxretry)
    monitor = SetMonitor(b)
    bad = [client_ip(0xFFF00000 + k) for k in range(attackers)]
    ips = [client_ip(i) for i in range(count)]
    last_line = {}
    step = count // attackers
    for k, ip in enumerate(bad):
        for j in range(maxretry):
            at = k * step + (j + 1) * step // (maxretry + 1)
            ips[at] = ip
        last_line[ip] = at
    frames = []
    for ip in ips:  # built before the clock starts: the sender must not be the bound
        m = LINE.format(ip=ip).encode()
        frames.append(b"%d %s" % (len(m), m))
    per_chunk = 50  # ~5 KB: a line's write time is known to within one small sendall
    chunks = [b"".join(frames[i : i + per_chunk]) for i in range(0, count, per_chunk)]
    del frames
    sock = b.socket(socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", PORT))
    written = []
    t0 = time.perf_counter()
    for chunk in chunks:
        sock.sendall(chunk)
        written.append(time.perf_counter())
    sent_s = time.perf_counter() - t0
    sock.close()
    monitor.wait_for({b.element_of(ip) for ip in bad}, 60)
    b.wait(lambda: b.received() >= count, 120)
    elapsed = time.perf_counter() - t0
    monitor.stop()
    commits = [e["latency_ms"] for e in b.events("ban")]
    b.stop()
    to_ban = [(monitor.seen[b.element_of(ip)] - written[last_line[ip] // per_chunk]) * 1000
              for ip in bad]
    return {"messages": count, "attackers": attackers, "maxretry": maxretry,
            "send_seconds": round(sent_s, 2), "msg_per_s": round(count / elapsed),
            "time_to_ban_ms": {"first_attacker": round(to_ban[0], 1),
                               "min": round(min(to_ban), 1),
                               "p50": round(percentile(to_ban, 0.5), 1),
                               "p95": round(percentile(to_ban, 0.95), 1),
                               "max": round(max(to_ban), 1)},
            "daemon_commit_latency_ms": {"bans": len(commits),
                                         "p50": round(percentile(commits, 0.5), 1),
                                         "p99": round(percentile(commits, 0.99), 1),
                                         "max": round(max(commits), 1)}}


def _rsyslog(b: Bench, name: str, body: str) -> subprocess.Popen:
    work = b.tmp / name
    work.mkdir(exist_ok=True)
    conf = work / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{work}")\n{body}\n')
    return subprocess.Popen(["ip", "netns", "exec", b.ns, "rsyslogd", "-n", "-f", str(conf),
                             "-i", str(work / "pid")], stdout=subprocess.DEVNULL,
                            stderr=(work / "err").open("wb"))


def _sender(b: Bench, lines: Path, port: int) -> subprocess.Popen:
    """rsyslog reading a prepared file (imfile) and forwarding it with omrelp, window 1024."""
    return _rsyslog(b, f"sender-{port}", f"""
module(load="imfile")
input(type="imfile" File="{lines}" Tag="roundcube:")
module(load="omrelp")
action(type="omrelp" target="127.0.0.1" port="{port}" windowSize="1024"
       queue.type="LinkedList" queue.size="500000")""")


def relp_blast(b: Bench, count: int, window: int) -> dict:
    sock = b.socket(socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", 20514))
    offers = b"relp_version=0\ncommands=syslog"
    sock.sendall(b"1 open %d %s\n" % (len(offers), offers))
    reply = b""
    while b"\n" not in reply or reply.count(b"\n") < 4:  # rsp header line + 3 offer lines
        reply += sock.recv(4096)
    frames = []
    for i in range(count):
        m = LINE.format(ip=client_ip(i + 2_000_000)).encode()
        frames.append(b"%d syslog %d %s\n" % (i + 2, len(m), m))
    t0 = time.perf_counter()
    sent = acked = 0
    while acked < count:
        room = min(window - (sent - acked), count - sent)
        if room > 0:
            sock.sendall(b"".join(frames[sent : sent + room]))
            sent += room
        acked += sock.recv(1 << 16).count(b"\n")  # one LF per "N rsp 6 200 OK\n"
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"seconds": round(elapsed, 2), "msg_per_s": round(count / elapsed)}


def relp_phase(b: Bench, count: int, store_rows: int) -> dict:
    lines = b.tmp / "relp-lines.log"
    with lines.open("w") as f:
        for i in range(count):
            f.write(LINE.format(ip=client_ip(i)).split(": ", 1)[1] + "\n")
    result: dict[str, object] = {"messages": count}

    # bansink: RELP with the journal on (a message is answered once its row is on disk)
    b.start(maxretry=NEVER, durable=True)
    t0 = time.perf_counter()
    sender = _sender(b, lines, 20514)
    b.wait(lambda: b.stats()["journal_rows"] >= count, 600)
    elapsed = time.perf_counter() - t0
    stats = b.stats()
    sender.terminate()
    sender.wait()
    b.stop()
    result["bansink"] = {"seconds": round(elapsed, 2), "msg_per_s": round(count / elapsed),
                         "journal_commits": stats["journal_commits"],
                         "rows_per_commit": round(stats["journal_rows"] / stats["journal_commits"])}

    # bansink again, fed by a pipelining client in this process (window 1024): what bansink
    # itself takes, without rsyslog's sender as the bound
    b.start(maxretry=NEVER, durable=True)
    result["bansink_fast_client"] = relp_blast(b, count, window=1024)
    b.stop()

    # rsyslog's own imrelp receiving the same stream into a file
    out = b.tmp / "imrelp-out.log"
    sink = _rsyslog(b, "imrelp", f"""
module(load="imrelp")
input(type="imrelp" port="20516")
action(type="omfile" file="{out}")""")
    b.wait(lambda: b"20516" in subprocess.run(["ip", "netns", "exec", b.ns, "ss", "-Hltn"],
                                              capture_output=True).stdout, 10)
    t0 = time.perf_counter()
    sender = _sender(b, lines, 20516)

    lines_out = [0, 0]  # lines counted, bytes read: each poll reads only what is new

    def written() -> int:
        try:
            with out.open("rb") as f:
                f.seek(lines_out[1])
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    lines_out[0] += chunk.count(b"\n")
                    lines_out[1] += len(chunk)
        except FileNotFoundError:
            pass
        return lines_out[0]

    b.wait(lambda: written() >= count, 600)
    elapsed = time.perf_counter() - t0
    for p in (sender, sink):
        p.terminate()
        p.wait()
    result["rsyslog_imrelp_to_file"] = {"seconds": round(elapsed, 2),
                                        "msg_per_s": round(count / elapsed)}

    # replay: a store filled to store_rows, then a restart
    from bansink.store.journal import Journal, JournalRow
    store_path = b.tmp / "store.db"
    journal = Journal(store_path, retention=86400, max_rows=store_rows)
    journal.open()
    have = journal.stats()["journal_rows"]
    now = time.time()
    batch = []
    for i in range(have, store_rows):
        raw = LINE.format(ip=client_ip(i + 5_000_000)).encode()
        batch.append(JournalRow(now - 1, "relp", "127.0.0.1", raw, i.to_bytes(16, "big")))
        if len(batch) == 10_000:
            journal.append(batch)
            batch = []
    if batch:
        journal.append(batch)
    store = journal.stats()
    journal.close()
    b.start(maxretry=NEVER, journal=store_path, durable=True)
    replayed = b.events("replayed")[-1]
    rss = b.rss_mib()
    b.stop()
    result["replay"] = {"rows": replayed["rows"], "seconds": replayed["seconds"],
                        "store_mib": round(store["journal_bytes"] / 2**20),
                        "rss_after_mib": round(rss[0])}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--phases", default="udp,tcp,latency,burst,relp")
    p.add_argument("--udp-count", type=int, default=200_000)
    p.add_argument("--udp-rate", type=int, default=50_000)
    p.add_argument("--tcp-count", type=int, default=1_000_000)
    p.add_argument("--bans", type=int, default=200)
    p.add_argument("--burst-count", type=int, default=100_000)
    p.add_argument("--burst-attackers", type=int, default=200)
    p.add_argument("--relp-count", type=int, default=200_000)
    p.add_argument("--store-rows", type=int, default=1_000_000)
    p.add_argument("--no-journal", action="store_true",
                   help="udp, tcp, latency and burst without the journal (relp keeps it)")
    p.add_argument("--ipv6-prefix", type=int, help="the jails' ipv6_prefix (default: 64)")
    args = p.parse_args()
    if args.quick:
        args.udp_count, args.tcp_count, args.bans = 50_000, 100_000, 50
        args.burst_count, args.burst_attackers = 50_000, 100
        args.relp_count, args.store_rows = 50_000, 100_000
    results: dict[str, object] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bansink-bench-") as tmp:
        b = Bench(Path(tmp))
        b.no_journal, b.ipv6_prefix = args.no_journal, args.ipv6_prefix
        try:
            phases = args.phases.split(",")
            if "udp" in phases:
                results["udp"] = udp_phase(b, args.udp_count, args.udp_rate)
                print("udp", json.dumps(results["udp"]), flush=True)
            if "tcp" in phases:
                results["tcp"] = tcp_phase(b, args.tcp_count)
                print("tcp", json.dumps(results["tcp"]), flush=True)
            if "latency" in phases:
                results["latency"] = latency_phase(b, args.bans)
                print("latency", json.dumps(results["latency"]), flush=True)
            if "burst" in phases:
                results["burst"] = burst_phase(b, args.burst_count, args.burst_attackers)
                print("burst", json.dumps(results["burst"]), flush=True)
            if "relp" in phases:
                results["relp"] = relp_phase(b, args.relp_count, args.store_rows)
                print("relp", json.dumps(results["relp"]), flush=True)
        finally:
            b.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
