"""Bans do not wait behind a read burst: a real rsyslogd forwards 100,000 lines in one burst over
TCP, attackers spread through it, and each ban reaches the kernel within a few commit intervals
of being decided (the daemon's `ban` lines report decision -> commit as latency_ms)."""

import math

from lab import PORT, PROXY4, Lab, Rsyslog, login_failed
from support import wait_until

LINES = 100_000
ATTACKERS = 200
MAXRETRY = 3
P99_LIMIT_MS = 50.0

# octet-counted, rsyslog's own batching; a queue large enough to take the whole burst at once
OMFWD = (f'action(type="omfwd" target="{PROXY4}" port="{PORT}" protocol="tcp" '
         'TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format" '
         'queue.type="LinkedList" queue.size="200000" queue.dequeueBatchSize="1024")')


def attacker(k: int) -> str:
    return f"198.18.{k // 250}.{k % 250 + 1}"


def filler(i: int) -> str:
    """A distinct address per line, each seen once: counted and tracked, never banned."""
    return f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def burst() -> list[str]:
    """LINES lines; attacker k's MAXRETRY lines sit in the k-th slice of the burst, among
    filler lines, so bans are decided all along it."""
    lines = [login_failed(filler(i)) for i in range(LINES)]
    step = LINES // ATTACKERS
    for k in range(ATTACKERS):
        for j in range(MAXRETRY):
            lines[k * step + (j + 1) * step // (MAXRETRY + 1)] = login_failed(attacker(k))
    return lines


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def burst_ban_latencies(lab: Lab) -> list[float]:
    """Run the burst; every attacker (and nobody else) banned; each ban's latency_ms."""
    lab.start(maxretry=MAXRETRY, findtime="1h")
    rsyslog = Rsyslog(lab.sender, lab.tmp, OMFWD)
    attackers = {attacker(k) for k in range(ATTACKERS)}
    rsyslog.log_lines(burst(), lab.tmp)

    wait_until(lambda: len(lab.daemon.lines("ban")) >= ATTACKERS, 60, "every attacker's ban")
    wait_until(lambda: attackers <= set(lab.proxy.set_elements()), 15, "attackers in ban4")
    bans = lab.daemon.lines("ban")
    assert {b["ip"] for b in bans} == attackers  # no filler address was banned
    assert all(b["count"] == MAXRETRY for b in bans)
    received = sum(wait_until(lambda: lab.daemon.stats()["received"], 10).values())
    assert received >= LINES
    latencies = [b["latency_ms"] for b in bans]
    print(f"burst: {received} received, ban latency p50 {percentile(latencies, 0.5)} ms, "
          f"p99 {percentile(latencies, 0.99)} ms, max {max(latencies)} ms")
    return latencies


def test_bans_land_within_50_ms_of_their_decision_during_a_100k_line_burst(lab: Lab):
    """Before the frame budget no ban reached the kernel until the burst was read (p99
    1.7-1.9 s here); with it, but the commit on its thread waiting for the GIL, p99 75-120 ms;
    with small commits on the event loop, 33-46 ms (measured)."""
    latencies = burst_ban_latencies(lab)
    assert percentile(latencies, 0.99) <= P99_LIMIT_MS, sorted(latencies)[-10:]
