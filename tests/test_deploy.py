"""What deploy/ ships is valid: the rsyslog snippets for Debian 12's rsyslog, and the systemd unit
(its least-privilege directives, systemd's own checks and exposure score)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import UNIT, unit_directives

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.mark.parametrize("snippet", ["rsyslog-webmail-forward.conf", "rsyslog-webmail-relp.conf"])
def test_rsyslog_accepts_the_snippet(snippet, tmp_path):
    for name in ("ca.pem", "webmail.pem", "webmail.key"):  # the TLS files it names
        (tmp_path / name).write_text("")
    text = (DEPLOY / snippet).read_text().replace("/etc/rsyslog.d/tls", str(tmp_path))
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{tmp_path}")\n{text}')
    result = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "error" not in (result.stderr + result.stdout).lower()


EXPOSURE = 1.6  # `systemd-analyze security --offline=true deploy/bansink.service`, systemd 252


def test_the_unit_runs_as_its_own_user_with_only_the_network_capabilities():
    unit = unit_directives()
    assert unit["User"] == ["bansink"] and unit["Group"] == ["bansink"]
    assert "DynamicUser" not in unit
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(unit["AmbientCapabilities"][-1].split()) == caps
    assert set(unit["CapabilityBoundingSet"][-1].split()) == caps
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["StateDirectory"] == ["bansink"] and unit["StateDirectoryMode"] == ["0700"]
    assert unit["RuntimeDirectory"] == ["bansink"] and unit["RuntimeDirectoryMode"] == ["0750"]
    assert unit["ProtectSystem"] == ["strict"] and unit["UMask"] == ["0077"]
    assert "PrivateNetwork" not in unit and "PrivateUsers" not in unit  # nftables is the host's


def test_setup_creates_the_units_user():
    setup = (DEPLOY / "setup.sh").read_text()
    assert "getent passwd bansink" in setup and "useradd --system" in setup


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is missing")
def test_systemd_accepts_every_directive_of_the_unit(tmp_path):
    checkout = Path(__file__).parent.parent
    unit = tmp_path / "bansink.service"  # ExecStart= must name a file that exists
    unit.write_text(UNIT.read_text().replace("/opt/bansink", str(checkout)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is missing")
def test_the_units_exposure_score_stays_low():
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(UNIT)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for bansink\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE, result.stdout
