"""Sources benchmark (not a test): the built-in sources on a mixed mail log. Run from the
checkout, as root for the daemon phase:

    .venv/bin/python bench/sources.py                   # 1,000,000 lines, a few minutes
    .venv/bin/python bench/sources.py --lines 200000 --phases test,cost

Phases:
  test    `bansink test LOG` with every built-in source (each line to the sources of its syslog
          tag), on one process and on one per CPU, and fail2ban-regex with ONE filter (stock
          dovecot) on the same file: wall and CPU seconds, lines/s
  cost    the engine in-process: microseconds per Dovecot message through SecurityPipeline
          with 1, 5 and all built-in sources configured (each its own jail)
  tcp     a real `bansink run` (bench.py's namespace and TCP sender) with a jail per built-in
          source, fed the mixed log as RFC 3164 messages with their tags: msg/s
The log is bench/maillog.py's: every sample line of tests/engine/sources/samples (failures,
non-failures and attacker-shaped lines) with random addresses from the documentation ranges
(for cost and tcp, random IPv6 ones: nearly every message a new client).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from maillog import mixed_log  # noqa: E402

from bansink.engine.addresses import NetworkSet  # noqa: E402
from bansink.engine.jail import JailSettings  # noqa: E402
from bansink.engine.pipeline import JailSpec, Protections, SecurityPipeline  # noqa: E402
from bansink.engine.sources import builtin_filter_sources, builtin_sources  # noqa: E402
from bansink.receiver.syslog import SyslogMessage, parse_syslog  # noqa: E402
from bench import BIN, NEVER, Bench, send_tcp  # noqa: E402

NOW = "2005-08-14"
_HEADER = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) (\S+?)(\[\d+\])?: (.*)$")
MESSAGE_TAGS = {"kerio": "security", "kopano": "kopano-webapp", "james": "james"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], **kw) -> dict:
    """Run a command; its wall and CPU seconds and its `Lines:` summary."""
    cpu, start = _children_cpu(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, **kw).stdout
    wall, used = time.perf_counter() - start, _children_cpu() - cpu
    summary = next((line for line in out.splitlines() if line.startswith("Lines:")), "")
    return {"wall_s": round(wall, 2), "cpu_s": round(used, 2), "summary": summary}


def test_phase(log: Path, lines: int) -> dict:
    results: dict[str, dict] = {}
    for jobs in (1, os.cpu_count() or 1):
        run = timed([str(BIN / "bansink"), "test", str(log), "--now", NOW, "--jobs", str(jobs)])
        run["lines_per_s"] = round(lines / run["wall_s"])
        run["lines_per_cpu_s"] = round(lines / run["cpu_s"])
        results[f"bansink_test_jobs_{jobs}"] = run
    f2b = ROOT / ".cache" / "fail2ban"
    if (f2b / "usr/bin/fail2ban-regex").exists():
        run = timed(["python3", str(f2b / "usr/bin/fail2ban-regex"),
                     "-c", str(f2b / "etc/fail2ban"), str(log),
                     str(f2b / "etc/fail2ban/filter.d/dovecot.conf")],
                    env={**os.environ, "PYTHONPATH": str(f2b / "usr/lib/python3/dist-packages")})
        run["lines_per_s"] = round(lines / run["wall_s"])
        run["lines_per_cpu_s"] = round(lines / run["cpu_s"])
        results["fail2ban_regex_dovecot_only"] = run
    return results


def as_messages(text: list[str]) -> list[bytes]:
    """Each log line as the RFC 3164 message a syslog daemon would have sent it in."""
    out = []
    for line in text:
        header = _HEADER.match(line)
        if header:
            stamp, host, tag, pid, msg = header.groups()
            out.append(f"<38>{stamp} {host} {tag}{pid or ''}: {msg}".encode())
            continue
        name = ("james" if " - org.apache.james" in line else
                "kopano" if "Kopano WebApp" in line or "[client " in line else "kerio")
        out.append(f"<38>Aug 13 11:00:00 mail {MESSAGE_TAGS[name]}: {line}".encode())
    return out


def cost_phase(text: list[str], count: int = 100_000) -> dict:
    dovecot = [raw for raw in as_messages(text) if b" dovecot" in raw or b"-login" in raw]
    messages = [parse_syslog(raw, peer="192.0.2.10", received_at=0.0) for raw in dovecot]
    messages = [m for m in messages if isinstance(m, SyslogMessage)][:count]
    names = sorted(builtin_filter_sources())
    chosen = {1: ["dovecot"], 5: ["dovecot", "postfix-sasl", "sogo", "roundcube", "kerio"],
              len(names) + 1: [*names, "roundcube-security_log"]}
    results = {}
    for n, sources in chosen.items():
        jails = [JailSpec(JailSettings(name, NEVER, 3600, 3600, 10_000_000), (name,))
                 for name in sources]
        nobody = NetworkSet([])
        pipeline = SecurityPipeline(jails, Protections(trusted_proxies=nobody, ignoreip=nobody,
                                                       senders=nobody),
                                    sources=builtin_sources())
        start = time.process_time()
        for i, message in enumerate(messages):
            pipeline.handle(message, float(i))
        results[f"{n}_sources_us_per_msg"] = round(
            (time.process_time() - start) / len(messages) * 1e6, 2)
    results["messages"] = len(messages)
    return results


def tcp_phase(text: list[str], tmp: Path) -> dict:
    jails = "".join(f'[jails.{name.replace("_", "-")}]\nsources = ["{name}"]\nmaxretry = '
                    f'{NEVER}\nfindtime = "1h"\n'
                    for name in [*sorted(builtin_filter_sources()), "roundcube-security_log"])
    b = Bench(tmp)
    try:
        b.start(maxretry=NEVER, jails=jails)
        messages = as_messages(text)
        elapsed = send_tcp(b, messages)
        stats = b.events("stats")[-1]
        return {"messages": len(messages), "seconds": round(elapsed, 2),
                "msg_per_s": round(len(messages) / elapsed), "outcomes": stats.get("outcomes")}
    finally:
        b.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--phases", default="test,cost,tcp")
    args = p.parse_args()
    phases = args.phases.split(",")
    results: dict[str, object] = {"cpus": os.cpu_count(), "lines": args.lines}
    with tempfile.TemporaryDirectory(prefix="bansink-sources-") as tmp:
        text = mixed_log(args.lines)
        log = Path(tmp) / "mail.log"
        log.write_text("\n".join(text) + "\n")
        if "test" in phases:
            results["test"] = test_phase(log, args.lines)
            print("test", json.dumps(results["test"]), flush=True)
        many = mixed_log(args.lines, ipv6=True) if {"cost", "tcp"} & set(phases) else []
        if "cost" in phases:
            results["cost"] = cost_phase(many)
            print("cost", json.dumps(results["cost"]), flush=True)
        if "tcp" in phases:
            results["tcp"] = tcp_phase(many, Path(tmp))
            print("tcp", json.dumps(results["tcp"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
