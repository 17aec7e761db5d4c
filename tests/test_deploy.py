"""The rsyslog snippets an operator copies are valid for the rsyslog that ships with Debian 12."""

import subprocess
from pathlib import Path

import pytest

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
