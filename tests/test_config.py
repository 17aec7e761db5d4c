import subprocess
from pathlib import Path

import pytest

from bansink.config import Config, ConfigError, load_config, parse_config

from support import BIN

EXAMPLE = Path(__file__).parent.parent / "deploy" / "bansink.toml"


def test_defaults_listen_on_loopback_only_with_the_artica_limits():
    c = Config()
    assert c.receiver.senders == ["127.0.0.0/8", "::1/128"]
    assert {h for h, _ in c.receiver.udp + c.receiver.tcp} == {"127.0.0.1", "::1"}
    assert (c.jail.maxretry, c.jail.findtime, c.jail.bantime) == (6, 600, 3600)


def test_durations_and_addresses_are_readable():
    c = parse_config({
        "jail": {"findtime": "10m", "bantime": "1h30m", "maxretry": 3},
        "receiver": {"tcp": ["[::]:6514", "0.0.0.0:514"], "senders": ["192.0.2.7"]},
        "nftables": {"commit_interval": "5ms"},
    })
    assert (c.jail.findtime, c.jail.bantime) == (600, 5400)
    assert c.receiver.tcp == [("::", 6514), ("0.0.0.0", 514)]
    assert c.receiver.senders == ["192.0.2.7/32"]
    assert c.nftables.commit_interval == pytest.approx(0.005)


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"jail": {"bantime": "forever"}}, "jail.bantime", "not a duration"),
        ({"jail": {"maxretry": 0}}, "jail.maxretry", "greater than or equal to 1"),
        ({"receiver": {"senders": ["192.0.2.0/24", "webmail"]}}, "receiver.senders[1]",
         "not an IP address"),
        ({"receiver": {"tcp": ["localhost:514"]}}, "receiver.tcp[0]", "not an IP address"),
        ({"receiver": {"udp": ["127.0.0.1:70000"]}}, "receiver.udp[0]", "out of range"),
        ({"receiver": {"udp": ["::1:514"]}}, "receiver.udp[0]", "brackets"),
        ({"jail": {"maxretries": 5}}, "jail.maxretries", "unknown key"),
        ({"nftables": {"table": "bad name"}}, "nftables.table", "pattern"),
        ({"log": {"format": "xml"}}, "log.format", "'json'"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(data, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "bansink.toml")
    assert f"bansink.toml: {key}: " in str(err.value)
    assert words in str(err.value)


def test_the_example_config_is_complete_and_valid():
    c = load_config(EXAMPLE)
    assert c == Config()  # the example states every default truthfully


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bansink"), "check-config", str(path)], capture_output=True,
                          text=True, timeout=30)


def test_check_config_cli(tmp_path):
    assert check_config(EXAMPLE).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[jail]\nbantime = "soon"\n')
    result = check_config(bad)
    assert result.returncode == 2
    assert "jail.bantime" in result.stderr and "soon" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[jail\n")
    result = check_config(broken)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line 1" in result.stderr
    result = check_config(tmp_path / "missing.toml")
    assert result.returncode == 2 and "no such file" in result.stderr
