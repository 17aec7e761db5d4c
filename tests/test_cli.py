"""`bansink` as operators run it, as a real process inside a namespace each test creates."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from bansink import cli

from support import BIN, Daemon, namespaces, wait_until

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CONFIG = """
[receiver]
udp = ["127.0.0.1:5514"]
tcp = ["127.0.0.1:5514"]
relp = []
[jail]
maxretry = 2
[log]
format = "json"
"""


def write_config(directory: Path) -> Path:
    path = directory / "b.toml"
    path.write_text(CONFIG + f'[journal]\npath = "{directory}/journal.db"\n')
    return path


@pytest.fixture
def ns():
    with namespaces("cli") as (ns,):
        yield ns


@pytest.fixture
def shared_tmp():
    """A directory the unprivileged user can read (pytest's own tmp_path is root-only)."""
    with tempfile.TemporaryDirectory(prefix="bansink-test-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def test_without_root_run_says_to_use_root_or_dry_run(ns, shared_tmp):
    cfg = write_config(shared_tmp)
    result = ns.run(*NOBODY, str(BIN / "bansink"), "run", "--config", str(cfg), check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("bansink: ") and len(err.strip().splitlines()) == 1
    assert "root" in err and "--dry-run" in err


def test_dry_run_decides_and_logs_without_privileges_or_nftables(ns, shared_tmp):
    shared_tmp.chmod(0o777)
    daemon = Daemon(ns, CONFIG, shared_tmp, "--dry-run", prefix=tuple(NOBODY))
    assert daemon.proc.poll() is None
    for _ in range(2):
        ns.run("logger", "-n", "127.0.0.1", "-P", "5514", "--tcp", "-t", "roundcube",
               'Login failed: client_ip="203.0.113.7", host="h", user="u", code=0')
    ban = wait_until(lambda: daemon.lines("ban"), 10, "dry-run ban line")
    assert (ban[0]["ip"], ban[0]["count"]) == ("203.0.113.7", 2)
    assert daemon.stop() == 0
    assert b"bansink" not in ns.run("nft", "list", "tables").stdout


def test_nft_remove_deletes_the_table(ns, tmp_path):
    cfg = write_config(tmp_path)
    daemon = Daemon(ns, CONFIG, tmp_path)
    daemon.stop()
    assert b"table inet bansink" in ns.run("nft", "list", "tables").stdout
    out = ns.run(str(BIN / "bansink"), "nft", "remove", "--config", str(cfg)).stdout.decode()
    assert out.strip() == "deleted table inet bansink"
    assert b"bansink" not in ns.run("nft", "list", "tables").stdout
    again = ns.run(str(BIN / "bansink"), "nft", "remove", "--config", str(cfg))
    assert b"nothing to delete" in again.stdout


def test_listen_address_in_use_is_a_one_line_error(ns, tmp_path):
    cfg = write_config(tmp_path)
    first = Daemon(ns, CONFIG, tmp_path)
    second = ns.run(str(BIN / "bansink"), "run", "--config", str(cfg), check=False)
    first.stop()
    assert second.returncode == 1
    err = second.stderr.decode()
    assert "127.0.0.1:5514" in err and "Address already in use" in err


def test_a_journal_that_cannot_be_opened_is_a_one_line_error(ns, shared_tmp):
    cfg = shared_tmp / "b.toml"
    cfg.write_text(CONFIG + '[journal]\npath = "/proc/bansink/journal.db"\n')
    result = ns.run(str(BIN / "bansink"), "run", "--dry-run", "--config", str(cfg), check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("bansink: journal.path: ") and len(err.strip().splitlines()) == 1


# `check-config` refuses what would break `run`, and `run` refuses it the same way (one line per
# problem naming the file and the key, exit 2, no traceback). In-process: nothing here may start
# the daemon or touch nftables, so both are replaced by failures.
BAD_VALUES = [
    ("[jail]\nbantime = 1e12\n", "jail.bantime", "at most 365d"),
    ("[jail]\nbantime = inf\n", "jail.bantime", "not a finite duration"),
    ("[jail]\nfindtime = nan\n", "jail.findtime", "not a finite duration"),
    ("[jail]\nfindtime = -600\n", "jail.findtime", "greater than zero"),
    ('[jail]\nbantime = "99999999999999999999d"\n', "jail.bantime", "at most 365d"),
    ("[jail]\nmaxretry = true\n", "jail.maxretry", "valid integer"),
    ("[jail]\nmaxretry = 6.0\n", "jail.maxretry", "valid integer"),
    ("[jail]\nmaxretry = 100000\n", "jail.maxretry", "less than or equal to 1000"),
    ("[receiver]\nudp_receive_buffer = 1099511627776\n", "receiver.udp_receive_buffer",
     "less than or equal to 1073741824"),
    ("[receiver]\nmax_connections = 1e12\n", "receiver.max_connections", "valid integer"),
    ('[receiver]\nidle_timeout = "2d"\n', "receiver.idle_timeout", "at most 1d"),
    ('[receiver]\nsenders = ["0.0.0.0/0"]\n', "receiver.senders", "receiver.allow_any = true"),
    ('[receiver]\nsenders = ["::/0"]\n', "receiver.senders", "receiver.allow_any = true"),
    ('[engine]\ntrusted_proxies = ["0.0.0.0/0"]\n', "engine.trusted_proxies",
     "engine.allow_any = true"),
    ('[engine]\nignoreip = ["::/0"]\n', "engine.ignoreip", "engine.allow_any = true"),
    ('[receiver]\nloopback_users = ["no-such-user-bsk"]\n', "receiver.loopback_users[0]",
     "no local user"),
    ("[engine]\nmax_tracked = 1000000000\n", "engine.max_tracked", "less than or equal"),
    ('[nftables]\ncommit_interval = "5s"\n', "nftables.commit_interval", "at most 1s"),
    ("[journal]\ncommit_interval = nan\n", "journal.commit_interval", "not a finite duration"),
    ('[journal]\nretention = "1000d"\n', "journal.retention", "at most 365d"),
    ('[journal]\nrelp_dedupe = "7d"\n', "journal.relp_dedupe", "at most 1d"),
    ("[journal]\nmax_rows = 1000000000000\n", "journal.max_rows", "less than or equal"),
    ("[journal]\nrelp_window = 0\n", "journal.relp_window", "greater than or equal to 1"),
    ('[journal]\npath = "/tmp/j\\u0000.db"\n', "journal.path", "NUL"),
]
BAD_FILES = [
    (b'[jail]\nbantime = "1h" # caf\xe9\n', "not UTF-8 (line 2"),
    (b"x = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
    (b"[jail\n", "not valid TOML"),
]


@pytest.fixture
def in_process(monkeypatch):
    """main() in this process, with the daemon and nftables out of reach."""
    def refuse(*args, **kw):
        raise AssertionError("a bad config got as far as the daemon")
    monkeypatch.setattr(cli, "serve", refuse)
    monkeypatch.setattr(cli, "nftables_backend", refuse)


def one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"],
                                     ["run", "--dry-run", "--config"]])
@pytest.mark.parametrize("text, key, words", BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_key(in_process, capsys, tmp_path, command, text, key,
                                               words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    err = one_line_error(capsys, [*command, str(path)])
    assert err.startswith(f"bansink: bad config: {path}: {key}: ") and words in err


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"]])
@pytest.mark.parametrize("content, words", BAD_FILES)
def test_an_unreadable_file_is_a_one_line_error(in_process, capsys, tmp_path, command, content,
                                                words):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    err = one_line_error(capsys, [*command, str(path)])
    assert err.startswith(f"bansink: bad config: {path}: ") and words in err


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"]])
def test_a_directory_or_a_missing_file_is_a_one_line_error(in_process, capsys, tmp_path, command):
    err = one_line_error(capsys, [*command, str(tmp_path)])
    assert err == f"bansink: bad config: {tmp_path}: is a directory, not a file\n"
    err = one_line_error(capsys, [*command, str(tmp_path / "missing.toml")])
    assert err == f"bansink: bad config: {tmp_path / 'missing.toml'}: no such file\n"


def test_several_problems_give_one_line_each(in_process, capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[jail]\nbantime = inf\nfindtime = nan\n")
    assert cli.main(["check-config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"bansink: bad config: {path}: jail.findtime: nan is not a finite duration",
                     f"bansink: bad config: {path}: jail.bantime: inf is not a finite duration"]


def test_a_catch_all_that_is_meant_passes_check_config(capsys, tmp_path):
    path = tmp_path / "any.toml"
    path.write_text('[receiver]\nallow_any = true\nsenders = ["0.0.0.0/0", "::/0"]\n'
                    '[engine]\nallow_any = true\nignoreip = ["0.0.0.0/0"]\n')
    assert cli.main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (1 jail: roundcube)\n"


@pytest.mark.parametrize("content, words", [
    (b"[jail]\nbantime = 1e12\n", "jail.bantime: 1000000000000.0 is too long"),
    (b"[receiver]\nudp_receive_buffer = 1099511627776\n", "receiver.udp_receive_buffer: "),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    (b"# \xff\xfe\n", "not UTF-8"),
])
def test_the_installed_command_refuses_them_too(ns, tmp_path, content, words):
    """As a real process: `check-config`, and `run` inside a namespace of its own."""
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    for result in (subprocess.run([str(BIN / "bansink"), "check-config", str(path)],
                                  capture_output=True, timeout=30),
                   ns.run(str(BIN / "bansink"), "run", "--config", str(path), check=False)):
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err
        assert err.startswith(f"bansink: bad config: {path}: ") and words in err
        assert len(err.splitlines()) == 1
