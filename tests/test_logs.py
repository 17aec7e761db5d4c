import json
import logging

import structlog

from bansink.logs import Throttle, configure_logging


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
