"""What scraping /metrics costs the daemon (not a test). Run as root from the checkout:

    .venv/bin/python bench/metrics.py                  # about two minutes
    .venv/bin/python bench/metrics.py --seconds 10 --runs 1

A real `bansink run` in bench.py's namespace (nftables backend, journal on), scraped through
its control socket as Prometheus would. Phases:
  scrape  the daemon's CPU per scrape, measured over --scrapes scrapes in a row: idle, and with
          --bans bans active (each in the kernel set; the collector counts them per jail and
          origin at every scrape)
  load    --rate msg/s of octet-counted TCP (each a new IPv6 client, as bench.py's tcp phase)
          for --seconds, without a scrape and with one every second, alternated --runs times:
          the daemon's CPU seconds for the same messages (utime + stime from /proc), best of
          the runs each way (and the means), and the difference as a share of the unscraped
          figure; with the per-scrape figure measured at that load, what a scrape every second
          and every 15 s (Prometheus' usual interval) cost as a share of the daemon's CPU.
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


def paced_load(b: Bench, rate: int, seconds: float, interval: float | None,
               sock: Path) -> dict:
    """`rate` msg/s for `seconds` on one TCP connection, scraped every `interval` (None:
    never); the daemon's CPU seconds from the first byte until it has received them all."""
    assert b.proc is not None
    count = int(rate * seconds)
    base = b.received()
    offset = getattr(b, "sent", 0)
    b.sent = offset + count
    frames = [b"%d %s" % (len(m), m) for m in
              (LINE.format(ip=client_ip(offset + i)).encode() for i in range(count))]
    per_tick = max(1, rate // 100)  # a chunk every 10 ms
    chunks = [b"".join(frames[i : i + per_tick]) for i in range(0, count, per_tick)]
    del frames
    conn = b.socket(socket.SOCK_STREAM)
    conn.connect(("127.0.0.1", 5514))
    stop = threading.Event()
    scrapes = [0]

    def scraper() -> None:
        while interval is not None and not stop.wait(interval):
            scrape(sock)
            scrapes[0] += 1

    thread = threading.Thread(target=scraper, daemon=True)
    cpu, t0 = cpu_seconds(b.proc.pid), time.perf_counter()
    thread.start()
    for i, chunk in enumerate(chunks):
        ahead = t0 + i / 100 - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        conn.sendall(chunk)
    conn.close()
    b.wait(lambda: b.received() - base >= count, 600)
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    used = cpu_seconds(b.proc.pid) - cpu
    return {"messages": count, "seconds": round(elapsed, 2), "msg_per_s": round(count / elapsed),
            "daemon_cpu_s": round(used, 3), "scrapes": scrapes[0]}


def mean(runs: list[dict]) -> float:
    return sum(r["daemon_cpu_s"] for r in runs) / len(runs)


def load_phase(b: Bench, rate: int, seconds: float, runs: int) -> dict:
    plain: list[dict] = []
    scraped: list[dict] = []
    sock = start(b, maxretry=NEVER)
    try:
        paced_load(b, rate, 2, None, sock)  # warm up: imports, first allocations
        for _ in range(runs):
            plain.append(paced_load(b, rate, seconds, None, sock))
            scraped.append(paced_load(b, rate, seconds, 1.0, sock))
        per = per_scrape(b, sock, 50)["daemon_cpu_ms_per_scrape"] / 1000
    finally:
        b.stop()
    best_plain = min(plain, key=lambda r: r["daemon_cpu_s"])
    best_scraped = min(scraped, key=lambda r: r["daemon_cpu_s"])
    cpu_per_s = best_plain["daemon_cpu_s"] / best_plain["seconds"]
    return {
        "rate": rate, "runs": runs, "unscraped": plain, "scraped_every_1s": scraped,
        "daemon_cpu_share_at_load": round(cpu_per_s, 3),
        "measured_overhead_pct_1s": round(
            100 * (best_scraped["daemon_cpu_s"] - best_plain["daemon_cpu_s"])
            / best_plain["daemon_cpu_s"], 2),
        "measured_overhead_pct_1s_means": round(
            100 * (mean(scraped) - mean(plain)) / mean(plain), 2),
        "derived_overhead_pct_1s": round(100 * per / cpu_per_s, 3),
        "derived_overhead_pct_15s": round(100 * per / 15 / cpu_per_s, 3),
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
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=300_000)
    args = p.parse_args()
    results: dict[str, object] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bansink-bench-metrics-") as tmp:
        b = Bench(Path(tmp))
        try:
            phases = args.phases.split(",")
            if "scrape" in phases:
                results["scrape"] = scrape_phase(b, args.scrapes, args.bans)
                print("scrape", json.dumps(results["scrape"]), flush=True)
            if "cost" in phases:
                results["cost"] = cost_phase(b, args.count, args.runs)
                print("cost", json.dumps(results["cost"]), flush=True)
            if "load" in phases:
                results["load"] = load_phase(b, args.rate, args.seconds, args.runs)
                print("load", json.dumps(results["load"]), flush=True)
        finally:
            b.close()
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
