"""/metrics in-process: a Daemon (dry-run backend, journal on disk) fed over UDP and TCP on
loopback, scraped through its control socket and read with prometheus_client's own parser."""

import asyncio
import re
import socket
from ipaddress import ip_address

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bansink.actions.dryrun import DryRunBackend
from bansink.config import parse_config
from bansink.daemon import Daemon
from bansink.metrics import SenderTally

from support import until

ADDRESS_LIKE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")


def line(ip: str) -> bytes:
    return (f'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="{ip}", '
            f'user="u", code=0').encode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by its name and sorted labels, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def assert_no_address_in_labels(text: str) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, value in sample.labels.items():
                assert not ADDRESS_LIKE.search(value), (sample.name, key, value)
                for token in re.split(r"[\s,;=()\[\]/]+", value):
                    try:
                        ip_address(token)
                    except ValueError:
                        continue
                    raise AssertionError(f"{sample.name}{{{key}={value!r}}} is an address")


async def scrape(path: str, accept: str = "") -> tuple[str, str]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
        async with session.get("http://bansink/metrics",
                               headers={"Accept": accept} if accept else {}) as response:
            assert response.status == 200
            return await response.text(), response.headers["Content-Type"]


def test_metrics_move_as_messages_arrive_and_no_label_is_an_address(tmp_path):
    udp, tcp = free_port(), free_port()
    config = parse_config({
        "receiver": {"udp": [f"127.0.0.1:{udp}"], "tcp": [f"127.0.0.1:{tcp}"],
                     "relp": [f"127.0.0.1:{free_port()}"], "senders": ["127.0.0.0/8"]},
        "engine": {"ignoreip": []},
        "jail": {"maxretry": 3, "findtime": "10m"},
        "journal": {"path": str(tmp_path / "journal.db")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "metrics": {"senders": [{"name": "webmail", "networks": ["127.0.0.1/32"]}]},
    })
    control = str(tmp_path / "control.sock")

    async def scenario():
        daemon = Daemon(config, DryRunBackend())
        await daemon.start()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.2", 0))  # a sender, but not one [metrics] names
        try:
            first, _ = await scrape(control)
            for i in range(5):
                sender.sendto(line(f"198.51.100.{i}"), ("127.0.0.1", udp))
            stranger.sendto(line("198.51.100.200"), ("127.0.0.1", udp))
            sender.sendto(b"<38>not syslog at all", ("127.0.0.1", udp))
            _, writer = await asyncio.open_connection("127.0.0.1", tcp)
            frames = b"".join(b"%d %s" % (len(m), m) for m in
                              [line("203.0.113.7")] * 3 + [line("203.0.113.8")])
            writer.write(frames)
            await writer.drain()
            writer.close()
            await until(lambda: daemon.enforcer.bans == 1, 10)
            await until(lambda: sum(daemon.hub.received.values()) == 11, 10)  # type: ignore
            text, content_type = await scrape(control)
            open_metrics, om_type = await scrape(
                control, "application/openmetrics-text; version=1.0.0")
            received_left = [dict(listener.received) for listener in daemon.listeners]
        finally:
            sender.close()
            stranger.close()
            daemon.stop()
            await daemon.close()
        return first, text, content_type, open_metrics, om_type, received_left

    first, text, content_type, open_metrics, om_type, received_left = asyncio.run(scenario())
    assert content_type.startswith("text/plain; version=0.0.4")
    assert om_type.startswith("application/openmetrics-text")
    assert open_metrics.rstrip().endswith("# EOF")
    before, after = samples(first), samples(text)
    received = "bansink_messages_received_total"
    assert (received, (("sender", "webmail"), ("transport", "udp"))) not in before
    assert after[(received, (("sender", "webmail"), ("transport", "udp")))] == 6
    assert after[(received, (("sender", "other"), ("transport", "udp")))] == 1
    assert after[(received, (("sender", "webmail"), ("transport", "tcp")))] == 4
    assert after[("bansink_dropped_total", (("reason", "malformed_syslog"),))] == 1
    assert after[("bansink_events_total", (("source", "roundcube"),))] == 10
    assert after[("bansink_outcomes_total", (("outcome", "banned"),))] == 1
    assert after[("bansink_failures_total", (("jail", "roundcube"),))] == 10
    assert after[("bansink_bans_total", (("jail", "roundcube"), ("origin", "jail")))] == 1
    assert after[("bansink_bans_active", (("jail", "roundcube"), ("origin", "jail")))] == 1
    assert after[("bansink_time_to_ban_seconds_count", ())] == 1
    assert after[("bansink_time_to_ban_seconds_sum", ())] < 5
    assert after[("bansink_nft_transaction_seconds_count", ())] >= 1
    assert after[("bansink_relp_unacknowledged_frames", (("transport", "relp"),))] == 0
    assert after[("bansink_journal_bytes", (("file", "db"),))] > 0
    assert after[("bansink_journal_rows_total", ())] >= 1
    assert after[("bansink_process_cpu_seconds_total", ())] > 0
    # the fail2ban exporter's names, as its dashboard reads them
    assert after[("f2b_jail_banned_current", (("jail", "roundcube"),))] == 1
    assert after[("f2b_jail_banned_total", (("jail", "roundcube"),))] == 1
    assert after[("f2b_jail_failed_total", (("jail", "roundcube"),))] == 10
    assert after[("f2b_config_jail_max_retries", (("jail", "roundcube"),))] == 3
    assert after[("f2b_up", ())] == 1
    assert_no_address_in_labels(first)
    assert_no_address_in_labels(text)
    assert received_left == [{}, {}, {}]  # the per-address counts were folded away


def test_a_sender_is_the_first_name_holding_it_else_other():
    tally = parse_config({"metrics": {"senders": [
        {"name": "webmail", "networks": ["192.0.2.10", "2001:db8::10"]},
        {"name": "lan", "networks": ["192.0.2.0/24"]}]}}).metrics.senders
    names = SenderTally(tally)
    assert [names.name_of(p) for p in ("192.0.2.10", "2001:db8::10", "192.0.2.11",
                                       "198.51.100.1", "fe80::1%eth0")] == \
        ["webmail", "webmail", "lan", "other", "other"]
