import math
import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bansink.config import (
    MAX_BANTIME,
    Config,
    ConfigError,
    JailEntry,
    RateLimitEntry,
    load_config,
    parse_config,
)

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


def _keys(model: type[BaseModel], prefix: str = "", unset: bool = True) -> set[str]:
    """Every key as a config file spells it (`"bantime.increment"` quoted: one key); without
    those whose default is unset (None) if `unset` is False."""
    keys = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= _keys(kind, f"{prefix}{name}.", unset)
        elif unset or field.default is not None:
            alias = field.alias or name
            keys.add(prefix + (f'"{alias}"' if "." in alias else alias))
    return keys


def _toml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _toml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + (f'"{name}"' if "." in name else name))
    return keys


def test_the_example_config_lists_every_key():
    text = EXAMPLE.read_text()
    listed = _toml_keys(tomllib.loads(text))
    # [jails.NAME] and [ratelimit.NAME] are shown commented out, and so are keys unset by default
    assert listed == _keys(Config, unset=False) - {"jails", "ratelimit"}
    example = "\n".join(line.removeprefix("# ") for line in text.splitlines()
                        if line.startswith("# ") and "=" in line)
    unset = {key.rpartition(".")[2] if '"' not in key else key[key.index('"'):]
             for key in _keys(Config) - _keys(Config, unset=False)}
    assert all(f"\n{key} =" in f"\n{example}" for key in unset), \
        "every key unset by default is shown commented out"
    assert all(f"\n{key} =" in f"\n{example}" for key in _keys(JailEntry)), \
        "every [jails.NAME] key is shown in the commented example"
    assert all(f"\n{key} =" in f"\n{example}" for key in _keys(RateLimitEntry)), \
        "every [ratelimit.NAME] key is shown in the commented example"
    assert {"receiver.allow_any", "receiver.loopback_users", "engine.allow_any",
            "journal.relp_window"} <= listed


# Values that `check-config` used to accept and that then broke `run` (or made no sense):
# every one is refused, naming the key.
OUT_OF_RANGE = [
    ({"jail": {"bantime": 1e12}}, "jail.bantime", "at most 365d"),
    ({"jail": {"bantime": "366d"}}, "jail.bantime", "at most 365d"),
    ({"jail": {"bantime": math.inf}}, "jail.bantime", "not a finite duration"),
    ({"jail": {"bantime": 10**400}}, "jail.bantime", "not a finite duration"),
    ({"jail": {"bantime": "9" * 400}}, "jail.bantime", "not a finite duration"),
    ({"jail": {"bantime": "1e12"}}, "jail.bantime", "not a duration"),
    ({"jail": {"bantime": 0.5}}, "jail.bantime", "at least 1s"),
    ({"jail": {"findtime": math.nan}}, "jail.findtime", "not a finite duration"),
    ({"jail": {"findtime": -math.inf}}, "jail.findtime", "not a finite duration"),
    ({"jail": {"findtime": -5}}, "jail.findtime", "greater than zero"),
    ({"jail": {"findtime": 0}}, "jail.findtime", "greater than zero"),
    ({"jail": {"findtime": "0s"}}, "jail.findtime", "greater than zero"),
    ({"jail": {"findtime": "31d"}}, "jail.findtime", "at most 30d"),
    ({"jail": {"findtime": True}}, "jail.findtime", "expected seconds"),
    ({"jail": {"maxretry": 1001}}, "jail.maxretry", "less than or equal to 1000"),
    ({"jail": {"maxretry": True}}, "jail.maxretry", "valid integer"),
    ({"jail": {"maxretry": 5.0}}, "jail.maxretry", "valid integer"),
    ({"jail": {"maxretry": "5"}}, "jail.maxretry", "valid integer"),
    ({"receiver": {"udp_receive_buffer": 2**40}}, "receiver.udp_receive_buffer",
     "less than or equal to 1073741824"),
    ({"receiver": {"udp_receive_buffer": 1e12}}, "receiver.udp_receive_buffer", "valid integer"),
    ({"receiver": {"max_connections": 10**7}}, "receiver.max_connections",
     "less than or equal to 1000000"),
    ({"receiver": {"max_connections": 10**30}}, "receiver.max_connections", "less than or equal"),
    ({"receiver": {"max_connections_per_sender": 0}}, "receiver.max_connections_per_sender",
     "greater than or equal to 1"),
    ({"receiver": {"max_message_size": False}}, "receiver.max_message_size", "valid integer"),
    ({"receiver": {"idle_timeout": "2d"}}, "receiver.idle_timeout", "at most 1d"),
    ({"receiver": {"idle_timeout": math.nan}}, "receiver.idle_timeout", "not a finite duration"),
    ({"engine": {"max_tracked": 10**9}}, "engine.max_tracked", "less than or equal to 100000000"),
    ({"nftables": {"commit_interval": "2s"}}, "nftables.commit_interval", "at most 1s"),
    ({"nftables": {"commit_interval": 0}}, "nftables.commit_interval", "greater than zero"),
    ({"nftables": {"ports": [True]}}, "nftables.ports", "True is not a port number"),
    ({"nftables": {"ports": [0]}}, "nftables.ports", "port 0 is not 1-65535"),
    ({"nftables": {"ports": "smtp,nosuchservice"}}, "nftables.ports",
     "unknown service name 'nosuchservice'"),
    ({"nftables": {"ports": ["2000:1000"]}}, "nftables.ports", "runs backwards"),
    ({"jails": {"k": {"sources": ["kerio"], "ports": "imap smtp"}}}, "jails.k.ports",
     "'imap smtp' is not a port number"),
    ({"ratelimit": {"smtp": {"ports": "1000:2000"}}}, "ratelimit.smtp.ports",
     "ranges are not supported"),
    ({"ratelimit": {"smtp": {"protocol": "icmp", "ports": [25]}}}, "ratelimit.smtp",
     "icmp has no ports"),
    ({"ratelimit": {"smtp": {}}}, "ratelimit.smtp", "tcp needs at least one port"),
    ({"ratelimit": {"smtp": {"ports": 25, "window": "1d"}}}, "ratelimit.smtp.window", ""),
    ({"ratelimit": {"smtp": {"ports": 25, "connections": 0}}}, "ratelimit.smtp.connections",
     ""),
    ({"ratelimit": {"Bad-Name": {"ports": 25}}}, "ratelimit.Bad-Name", "a rate limit name"),
    ({"nftables": {"priority": 1e3}}, "nftables.priority", "valid integer"),
    ({"journal": {"commit_interval": math.inf}}, "journal.commit_interval", "not a finite"),
    ({"journal": {"unacknowledged_interval": "5s"}}, "journal.unacknowledged_interval",
     "at most 1s"),
    ({"journal": {"unacknowledged_interval": -1}}, "journal.unacknowledged_interval",
     "greater than zero"),
    ({"journal": {"retention": "400d"}}, "journal.retention", "at most 365d"),
    ({"journal": {"relp_dedupe": "2d"}}, "journal.relp_dedupe", "at most 1d"),
    ({"journal": {"relp_dedupe": -1}}, "journal.relp_dedupe", "greater than zero"),
    ({"journal": {"max_rows": 10**9}}, "journal.max_rows", "less than or equal to 100000000"),
    ({"journal": {"relp_window": 0}}, "journal.relp_window", "greater than or equal to 1"),
    ({"journal": {"relp_window": 65537}}, "journal.relp_window", "less than or equal to 65536"),
    ({"journal": {"relp_window": True}}, "journal.relp_window", "valid integer"),
    ({"journal": {"path": "/var/lib/bansink/j\0.db"}}, "journal.path", "NUL"),
    ({"receiver": {"senders": ["192.0.2.7", "0.0.0.0/0"]}}, "receiver.senders",
     "set receiver.allow_any = true"),
    ({"receiver": {"senders": ["::/0"]}}, "receiver.senders", "set receiver.allow_any = true"),
    ({"receiver": {"allow_any": "yes"}}, "receiver.allow_any", "valid boolean"),
    ({"engine": {"trusted_proxies": ["0.0.0.0/0"]}}, "engine.trusted_proxies",
     "set engine.allow_any = true"),
    ({"engine": {"ignoreip": ["::/0"]}}, "engine.ignoreip", "set engine.allow_any = true"),
    ({"engine": {"ignoreip": ["0.0.0.0/0"]}, "receiver": {"allow_any": True}}, "engine.ignoreip",
     "set engine.allow_any = true"),
    ({"receiver": {"loopback_users": ["root", "no-such-user-bsk"]}},
     "receiver.loopback_users[1]", "no local user 'no-such-user-bsk'"),
    ({"receiver": {"loopback_users": [-1]}}, "receiver.loopback_users[0]", "out of range"),
    ({"receiver": {"loopback_users": [2**32 - 1]}}, "receiver.loopback_users[0]", "out of range"),
    ({"receiver": {"loopback_users": [True]}}, "receiver.loopback_users[0]", "user name"),
]


@pytest.mark.parametrize("data, key, words", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_naming_the_key(data, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "bansink.toml")
    message = str(err.value)
    assert f"bansink.toml: {key}: " in message and words in message
    assert len(message.splitlines()) == 1 and len(message) < 200


@pytest.mark.parametrize("data", [
    {"jail": {"bantime": "365d", "findtime": "30d", "maxretry": 1000},
     "journal": {"retention": "30d"}},
    {"jail": {"bantime": 1}, "receiver": {"idle_timeout": "1d", "max_connections": 1_000_000}},
    {"receiver": {"udp_receive_buffer": 1 << 30}, "engine": {"max_tracked": 100_000_000}},
    {"nftables": {"commit_interval": "1s"}, "journal": {"commit_interval": 0.0001,
                                                        "retention": "365d", "relp_dedupe": "1d",
                                                        "max_rows": 100_000_000}},
    {"journal": {"relp_window": 65536}},
    {"journal": {"relp_window": 1}},
])
def test_the_bounds_themselves_are_accepted(data):
    parse_config(data)


def test_bantime_cap_is_far_below_the_kernels_limit():
    # measured: the kernel takes timeouts up to 18,446,744,073 s and refuses 1e12 s (ERANGE)
    assert MAX_BANTIME == 365 * 86400 < 1e9


def test_a_catch_all_network_is_accepted_when_meant():
    c = parse_config({"receiver": {"allow_any": True, "senders": ["0.0.0.0/0", "::/0"]},
                      "engine": {"allow_any": True, "trusted_proxies": ["::/0"],
                                 "ignoreip": ["0.0.0.0/0"]}})
    assert c.receiver.senders == ["0.0.0.0/0", "::/0"]
    assert (c.engine.trusted_proxies, c.engine.ignoreip) == (["::/0"], ["0.0.0.0/0"])
    assert not Config().receiver.allow_any and not Config().engine.allow_any


def test_loopback_users_resolve_to_uids_when_validated():
    assert Config().receiver.loopback_users == ["root"]
    assert Config().receiver.loopback_uids == (0,)
    c = parse_config({"receiver": {"loopback_users": ["root", "nobody", 65534, 1234]}})
    assert c.receiver.loopback_users == ["root", "nobody", 65534, 1234]
    assert c.receiver.loopback_uids == (0, 65534, 1234)
    assert parse_config({"receiver": {"loopback_users": []}}).receiver.loopback_uids == ()


def test_relp_window_defaults_to_1024():
    assert Config().journal.relp_window == 1024
    assert parse_config({"journal": {"relp_window": 128}}).journal.relp_window == 128


def test_retention_must_cover_findtime():
    with pytest.raises(ConfigError, match=r"journal.retention \(1d\) must be at least "
                                          r"the longest findtime \(30d\)"):
        parse_config({"jail": {"findtime": "30d"}})


def test_several_problems_give_one_line_each():
    with pytest.raises(ConfigError) as err:
        parse_config({"jail": {"bantime": "inf"}, "receiver": {"udp_receive_buffer": 2**40}},
                     "f.toml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("f.toml: receiver.udp_receive_buffer: ")
    assert lines[1].startswith("f.toml: jail.bantime: ")


BAD_FILES = {
    "non-UTF-8": (b'[jail]\nbantime = "1h"\n# caf\xe9\n', "not UTF-8 (line 3"),
    "deeply nested": (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    "deep tables": (b"x = " + b"{a = " * 5000 + b"1" + b"}" * 5000 + b"\n", "nested too deeply"),
    "too large": (b"# " + b"x" * (1 << 20) + b"\n", "larger than 1048576 bytes"),
    "NUL byte": (b'[jail]\nbantime = "1h"\x00\n', "not valid TOML"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_unreadable_files_are_a_one_line_error(tmp_path, name):
    content, words = BAD_FILES[name]
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


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
