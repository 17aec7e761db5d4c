import asyncio
import json
import logging
from ipaddress import ip_address

import structlog

from bansink.actions.dryrun import DryRunBackend
from bansink.daemon import Enforcer, Throttle
from bansink.engine.jail import BanDecision
from bansink.logs import configure_logging


class CountingBackend(DryRunBackend):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []

    def commit(self):
        result = super().commit()
        self.commits.append(len(result.bans))
        return result


def test_bans_decided_in_one_tick_go_out_in_one_commit():
    backend = CountingBackend()

    async def scenario():
        enforcer = Enforcer(backend, interval=0.05)
        for i in range(50):
            enforcer.ban(BanDecision(ip_address(f"203.0.113.{i}"), "roundcube", 6, 60, 0.0))
        await enforcer.close()
        return enforcer.bans

    assert asyncio.run(scenario()) == 50
    assert backend.commits == [50]


def test_throttle_allows_one_line_per_key_and_interval_and_counts_the_rest():
    throttle = Throttle(interval=10)
    assert throttle.allow(("drop", "192.0.2.9"), 0.0) == 0
    assert throttle.allow(("drop", "192.0.2.9"), 1.0) is None
    assert throttle.allow(("drop", "192.0.2.9"), 2.0) is None
    assert throttle.allow(("drop", "192.0.2.8"), 2.0) == 0
    assert throttle.allow(("drop", "192.0.2.9"), 10.0) == 2


def test_stdlib_records_are_rendered_as_json_lines(capsys):
    configure_logging("json", "info")
    try:
        logging.getLogger("asyncio").error("Exception in callback %s", "x")
        out = capsys.readouterr().out
    finally:  # the renderer holds this test's captured stdout: leave none behind
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["event"], line["level"], line["logger"]) == ("Exception in callback x", "error",
                                                             "asyncio")
