import asyncio
from collections import defaultdict, deque

from bansink.actions.dryrun import DryRunBackend
from bansink.config import parse_config
from bansink.enforcer import Enforcer
from bansink.hub import Hub
from bansink.jails import build_pipeline
from bansink.replay import replay
from bansink.resends import ResendGuard
from bansink.store.journal import JournalRow

RAW = (b'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="203.0.113.7", '
       b'user="u{}", code=0')


def test_replay_rebuilds_counts_and_the_resend_candidates_and_shortens_bans():
    pipeline = build_pipeline(parse_config({"jail": {"maxretry": 2, "bantime": 100}}))

    async def in_a_loop():
        hub = Hub(pipeline, Enforcer(DryRunBackend(), 0.01), None, ResendGuard(1, 600))
        return replay(rows, hub, tails, mono_now=500.0, wall_now=wall, counts_since=wall - 600)

    wall = 10_000.0
    rows = [JournalRow(wall - 30, "relp", "127.0.0.1", RAW.replace(b"{}", b"1"), b"d1"),
            JournalRow(wall - 20, "relp", "127.0.0.1", RAW.replace(b"{}", b"2"), b"d2"),
            JournalRow(wall - 10, "udp", "127.0.0.1", RAW.replace(b"{}", b"3"), b"")]
    tails: defaultdict[str, deque[bytes]] = defaultdict(lambda: deque(maxlen=1))
    bans = asyncio.run(in_a_loop())
    assert [(str(b.target), round(b.bantime), round(wall - decided)) for b, decided in bans] == \
        [("203.0.113.7", 80, 20)]
    assert tails == {"127.0.0.1": deque([b"d2"], maxlen=1)}  # RELP rows only, the last window
