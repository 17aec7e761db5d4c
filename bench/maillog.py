"""A mixed mail log for benchmarks: the built-in sources' sample lines (tests/engine/sources/
samples/, every failing and non-failing line, the attacker-shaped ones too) repeated in a
shuffled order with their addresses replaced by random ones from the documentation ranges.

    .venv/bin/python bench/maillog.py OUT [--lines 1000000] [--seed 1]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import re
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "engine" / "sources" / "samples"
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def sample_lines() -> list[str]:
    """Every sample line (comments and blanks left out), as written in the sample files."""
    lines = []
    for path in sorted(SAMPLES.glob("*.log")):
        lines += [line for line in path.read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    return lines


def mixed_log(count: int, seed: int = 1, ipv6: bool = False) -> list[str]:
    """`count` sample lines drawn at random, each address replaced by a random one: from the
    three IPv4 documentation /24s (762 addresses: a file fail2ban-regex reads too), or with
    `ipv6` from 2001:db8::/32 (nearly every line a new client, as on a daemon under attack from
    many addresses)."""
    rng = random.Random(seed)
    templates = sample_lines()

    def address(_: re.Match[str]) -> str:
        if ipv6:
            return f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::1"
        net = rng.choice(_NETS)
        return str(net.network_address + rng.randrange(1, 255))

    return [_IPV4.sub(address, rng.choice(templates)) for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    args.out.write_text("\n".join(mixed_log(args.lines, args.seed)) + "\n")


if __name__ == "__main__":
    main()
