"""`bansink test`: fail2ban-regex's summary, JSON Lines, and a jail replayed by the log's own
times, run as the real command."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import bansink.logtest as logtest
from bansink.engine.sources import builtin_filter_sources

SEED = Path(__file__).parent / "engine" / "sources" / "james-seed.log"


def bansink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bansink.cli", "test", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_the_james_seed_lines_all_match_as_the_document_says():
    done = bansink(SEED, "--source", "james")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "Lines: 8 lines, 0 ignored, 8 matched, 0 missed"
    assert "2  45.129.14.40" in done.stdout


def test_json_lines_give_one_object_per_failure_then_the_summary(tmp_path: Path):
    log = tmp_path / "mail.log"
    log.write_text(
        "Aug 13 15:45:46 mx postfix/smtpd[1]: warning: unknown[192.0.2.1]: SASL LOGIN "
        "authentication failed: UGFzc3dvcmQ6\n"
        "Aug 13 15:45:47 mx postfix/smtpd[1]: connect from unknown[192.0.2.1]\n")
    done = bansink(log, "--source", "postfix-sasl", "--json", "--now", "2005-08-14")
    assert done.returncode == 0, done.stderr
    first, summary = (json.loads(line) for line in done.stdout.splitlines())
    assert {k: first[k] for k in ("lineno", "match", "ip", "filter")} == {
        "lineno": 1, "match": True, "ip": "192.0.2.1", "filter": "postfix-sasl"}
    assert first["time"].startswith("2005-08-13T15:45:46")
    assert summary == {"summary": {"lines": 2, "matched": 1, "ignored": 0, "missed": 1}}


def test_a_jail_replays_the_log_by_its_own_times(tmp_path: Path):
    config = tmp_path / "bansink.toml"
    config.write_text('[journal]\npath = ""\n[jails.james]\nsources = ["james"]\n'
                      'maxretry = 2\nfindtime = "20m"\nbantime = "2h"\n')
    done = bansink(SEED, "--jail", "james", "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    bans = [json.loads(line)["ban"] for line in done.stdout.splitlines() if '"ban"' in line]
    assert sorted(ban["ip"] for ban in bans) == ["45.129.14.30", "45.129.14.31",
                                                 "45.129.14.40", "45.129.14.41"]
    by_ip = {ban["ip"]: ban for ban in bans}
    assert by_ip["45.129.14.30"]["time"].startswith("2023-06-17T")  # the second failure's time
    assert by_ip["45.129.14.30"]["failures"] == 2


def test_an_unknown_source_is_a_usage_error():
    done = bansink(SEED, "--source", "nope")
    assert done.returncode == 2 and "unknown" in done.stderr


SAMPLES = Path(__file__).parent / "engine" / "sources" / "samples"


def sample_lines() -> list[str]:
    return [line for path in sorted(SAMPLES.glob("*.log"))
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_every_built_in_source_routed_by_tag_finds_what_trying_each_in_turn_finds():
    lines, sources = sample_lines(), list(builtin_filter_sources().values())
    each = {f.lineno: f for f in logtest.scan(lines, sources, 1124013600.0, logtest.Tally())}
    routed_tally = logtest.Tally()
    routed = {f.lineno: f for f in logtest.scan(lines, sources, 1124013600.0, routed_tally,
                                                     routed=True)}
    assert len(routed) > 100 and routed_tally.lines == len(lines)
    assert all(each[n] == found for n, found in routed.items())
    # what routing leaves out is a Postfix instance with its own syslog_name, which the daemon
    # does not hand to postfix-sasl either (the jail's `tags` does)
    assert {lines[n - 1].split()[4] for n in each.keys() - routed.keys()} == \
        {"postfix-in/smtpd[10752]:"}


def test_a_file_read_on_several_processes_gives_what_one_process_gives(monkeypatch):
    monkeypatch.setattr(logtest, "CHUNK", 50)
    lines, sources = sample_lines() * 3, list(builtin_filter_sources().values())
    one, two = logtest.Tally(), logtest.Tally()
    alone = logtest.scan_file(lines, sources, 1124013600.0, one, keep_missed=True, routed=True)
    shared = logtest.scan_file(lines, sources, 1124013600.0, two, keep_missed=True, routed=True,
                               jobs=2)
    assert len(lines) > 3 * 50 and alone == shared
    assert (one.lines, one.matched, one.missed, one.hosts, one.missed_lines) == \
        (two.lines, two.matched, two.missed, two.hosts, two.missed_lines)


def test_a_line_goes_to_the_sources_of_its_tag_before_those_of_every_tag():
    sources = builtin_filter_sources()
    routes = logtest.Routes(list(sources.values()), routed=True)
    # kerio reads every tag and sorts first by name, but the pipeline asks it after roundcube
    assert [name for name, _, _ in routes("roundcube", True)] == ["roundcube", "kerio"]
    assert [name for name, _, _ in routes("cron", True)] == ["kerio"]
    assert [name for name, _, _ in routes(None, False)] == ["james", "kerio", "kopano"]
    named = logtest.Routes([sources["sogo"], sources["kerio"]], routed=False)
    assert [name for name, _, _ in named("roundcube", True)] == ["sogo", "kerio"]


def test_the_cycle_collector_runs_again_after_a_scan(monkeypatch):
    monkeypatch.setattr(logtest, "CHUNK", 50)
    sources = list(builtin_filter_sources().values())
    for jobs in (1, 2):
        assert gc.isenabled()
        logtest.scan_file(sample_lines() * 2, sources, 1124013600.0, logtest.Tally(),
                          routed=True, jobs=jobs)
        assert gc.isenabled()
