"""`bansink` as operators run it, as a real process inside a namespace each test creates."""

import os
import tempfile
from pathlib import Path

import pytest

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
