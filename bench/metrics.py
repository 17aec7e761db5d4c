"""What scraping /metrics costs the daemon (not a test). Run as root from the checkout:

    .venv/bin/python bench/metrics.py                  # about five minutes
    .venv/bin/python bench/metrics.py --phases load --segment 5 --pairs 3

A real `bansink run` in bench.py's namespace (nftables backend, journal on unless
--no-journal), scraped through
its control socket as Prometheus would. Phases:
  scrape  the daemon's CPU per scrape, measured over --scrapes scrapes in a row: idle, and with
          --bans bans active (each in the kernel set; the collector counts them per jail and
          origin at every scrape)
  load    --rate msg/s of octet-counted TCP (each a new IPv6 client from a pool of 200,000, as
          bench.py's tcp phase) into one daemon, steadily; --pairs times a --segment without a
          scrape, then one scraped every second, alternated so that the shared machine's drift
          falls on both alike: the daemon's CPU microseconds per message (utime + stime from
          /proc) each way, their difference (and the median of each scraped segment against
          its unscraped neighbours); and, from the CPU one scrape costs at that load, what a
          scrape every second and every 15 s (Prometheus' usual interval) cost as a share of
          the daemon's CPU
  cost    --count octet-counted TCP messages unpaced (bench.py's tcp phase), never scraped:
          the daemon's CPU microseconds per message, best of --runs (to compare a build with
          and without the per-message counts the metrics read)
The target (issue 11): scraping under 50k msg/s costs at most 2 % of the daemon's CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import LINE, NEVER, Bench, client_ip, send_tcp  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("bansink", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def scrape(path: Path) -> bytes:
    connection = UnixConnection(str(path))
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        connection.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the daemon (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sample(text: bytes, name: str) -> float:
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start(b: Bench, maxretry: int) -> Path:
    sock = b.tmp / f"control-{time.monotonic_ns()}.sock"
    b.start(maxretry=maxretry, extra=f'[control]\nsocket = "{sock}"\n')
    return sock


def per_scrape(b: Bench, sock: Path, scrapes: int) -> dict:
    assert b.proc is not None
    scrape(sock)  # the first builds what later ones reuse
    cpu, wall = cpu_seconds(b.proc.pid), time.perf_counter()
    size = 0
    for _ in range(scrapes):
        size = len(scrape(sock))
    wall = time.perf_counter() - wall
    used = cpu_seconds(b.proc.pid) - cpu
    return {"scrapes": scrapes, "daemon_cpu_ms_per_scrape": round(used / scrapes * 1000, 2),
            "wall_ms_per_scrape": round(wall / scrapes * 1000, 2), "bytes": size}


def scrape_phase(b: Bench, scrapes: int, bans: int) -> dict:
    result = {}
    sock = start(b, maxretry=NEVER)
    result["idle"] = per_scrape(b, sock, scrapes)
    b.stop()
    sock = start(b, maxretry=1)
    frames = [LINE.format(ip=client_ip(0xFFF00000 + i)).encode() for i in range(bans)]
    conn = b.socket(socket.SOCK_STREAM)
    conn.connect(("127.0.0.1", 5514))
    conn.sendall(b"".join(b"%d %s" % (len(m), m) for m in frames))
    conn.close()
    b.wait(lambda: sample(scrape(sock), "bansink_bans_active") >= bans, 300)
    result[f"{bans}_bans_active"] = per_scrape(b, sock, scrapes)
    b.stop()
    return result


class PacedSender:
    """`rate` msg/s of octet-counted TCP on one connection, on a thread, until stopped: a pool
    of `pool` distinct IPv6 clients, cycled (built before the clock starts: the sender must
    not be the bound). When bansink reads slower, sendall blocks: the daemon runs flat out."""

    def __init__(self, b: Bench, rate: int, pool: int = 200_000) -> None:
        frames = [b"%d %s" % (len(m), m) for m in
                  (LINE.format(ip=client_ip(i)).encode() for i in range(pool))]
        self.per_tick = max(1, rate // 100)  # a chunk every 10 ms
        self.chunks = [b"".join(frames[i : i + self.per_tick])
                       for i in range(0, pool, self.per_tick)]
        self.conn = b.socket(socket.SOCK_STREAM)
        self.conn.connect(("127.0.0.1", 5514))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        t0, tick = time.perf_counter(), 0
        while not self.stopped.is_set():
            ahead = t0 + tick / 100 - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            self.conn.sendall(self.chunks[tick % len(self.chunks)])
            tick += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.conn.close()


def load_phase(b: Bench, rate: int, segment: float, pairs: int) -> dict:
    """One daemon under a steady load; `pairs` times a `segment` without scraping, then one
    scraped every second, alternated so that the machine's drift (other load on it) falls on
    both alike. Per segment: the daemon's CPU microseconds per message received."""
    sock = start(b, maxretry=NEVER)
    assert b.proc is not None
    pid = b.proc.pid
    sender = PacedSender(b, rate)
    segments: list[dict] = []
    try:
        time.sleep(segment)  # warm up
        for index in range(2 * pairs):
            scraped = index % 2 == 1
            stop, scrapes = threading.Event(), [0]

            def scraper(stop: threading.Event = stop, scrapes: list[int] = scrapes) -> None:
                while not stop.wait(1.0):
                    scrape(sock)
                    scrapes[0] += 1

            thread = threading.Thread(target=scraper, daemon=True)
            received, cpu, t0 = b.received(), cpu_seconds(pid), time.perf_counter()
            if scraped:
                thread.start()
            time.sleep(segment)
            stop.set()
            if scraped:
                thread.join()
            got, used = b.received() - received, cpu_seconds(pid) - cpu
            segments.append({"scraped": scraped, "messages": got,
                             "msg_per_s": round(got / (time.perf_counter() - t0)),
                             "scrapes": scrapes[0],
                             "cpu_us_per_msg": round(used / got * 1e6, 3)})
        sender.stop()
        b.settle()
        # the CPU of a scrape alone, with the state the load left (200,000 tracked clients)
        per = per_scrape(b, sock, 50)["daemon_cpu_ms_per_scrape"] / 1000
    finally:
        if not sender.stopped.is_set():
            sender.stop()
        b.stop()
    plain = [s["cpu_us_per_msg"] for s in segments if not s["scraped"]]
    scraped = [s["cpu_us_per_msg"] for s in segments if s["scraped"]]
    # each scraped segment against the mean of the unscraped ones around it
    paired = [100 * (segments[i]["cpu_us_per_msg"] / ((segments[i - 1]["cpu_us_per_msg"] + (
        segments[i + 1] if i + 1 < len(segments) else segments[i - 1])["cpu_us_per_msg"]) / 2)
        - 1) for i in range(1, len(segments), 2)]
    cpu_share = sum(s["messages"] for s in segments) / len(segments) / segment * (
        sum(plain) / len(plain)) / 1e6
    return {
        "rate_asked": rate, "segment_s": segment, "pairs": pairs, "segments": segments,
        "unscraped_us_per_msg_mean": round(sum(plain) / len(plain), 3),
        "scraped_us_per_msg_mean": round(sum(scraped) / len(scraped), 3),
        "measured_overhead_pct_1s": round(100 * (sum(scraped) / sum(plain) - 1), 2),
        "measured_overhead_pct_1s_paired_median": round(sorted(paired)[len(paired) // 2], 2),
        "daemon_cpu_share_at_load": round(cpu_share, 3),
        "daemon_cpu_ms_per_scrape_after_load": round(per * 1000, 2),
        "derived_overhead_pct_1s": round(100 * per / cpu_share, 3),
        "derived_overhead_pct_15s": round(100 * per / 15 / cpu_share, 3),
    }


def cost_phase(b: Bench, count: int, runs: int) -> dict:
    best: dict = {}
    for run in range(runs):
        start(b, maxretry=NEVER)
        assert b.proc is not None
        messages = [LINE.format(ip=client_ip(run * count + i)).encode() for i in range(count)]
        cpu = cpu_seconds(b.proc.pid)
        elapsed = send_tcp(b, messages)
        used = cpu_seconds(b.proc.pid) - cpu
        b.stop()
        result = {"messages": count, "msg_per_s": round(count / elapsed),
                  "daemon_cpu_us_per_msg": round(used / count * 1e6, 2)}
        if not best or result["daemon_cpu_us_per_msg"] < best["daemon_cpu_us_per_msg"]:
            best = result
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phases", default="scrape,load")
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--bans", type=int, default=10_000)
    p.add_argument("--rate", type=int, default=50_000)
    p.add_argument("--segment", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=300_000)
    p.add_argument("--no-journal", action="store_true",
                   help="the daemon without its journal (it then takes 50,000 msg/s here)")
    args = p.parse_args()
    results: dict[str, object] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bansink-bench-metrics-") as tmp:
        b = Bench(Path(tmp))
        b.no_journal = args.no_journal
        try:
            phases = args.phases.split(",")
            if "scrape" in phases:
                results["scrape"] = scrape_phase(b, args.scrapes, args.bans)
                print("scrape", json.dumps(results["scrape"]), flush=True)
            if "cost" in phases:
                results["cost"] = cost_phase(b, args.count, args.runs)
                print("cost", json.dumps(results["cost"]), flush=True)
            if "load" in phases:
                results["load"] = load_phase(b, args.rate, args.segment, args.pairs)
                print("load", json.dumps(results["load"]), flush=True)
        finally:
            b.close()
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
