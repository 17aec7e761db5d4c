"""The snippets that get each app's logs to bansink (deploy/sources/) load in Debian 12's rsyslog,
keep the RELP settings bansink relies on, and the log4j2 alternative is a well-formed config."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support import make_certificates

SOURCES = Path(__file__).parent.parent / "deploy" / "sources"
CONFS = sorted(SOURCES.glob("*.conf"))
TLS_DIR = "/etc/rsyslog.d/tls/"  # where the snippets expect their certificates
LISTENERS = {"514", "20514", "20515", "6514"}  # bansink's udp/tcp, relp, relp_tls, tls ports


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"), "DNS:proxy.example")


def loadable_copy(snippet: Path, certs: Path, tmp: Path) -> Path:
    """The snippet with its TLS files replaced by real throwaway ones, after the one line of
    Debian's rsyslog.conf it relies on ($WorkDirectory: imfile state, disk queues)."""
    text = snippet.read_text()
    tls = tmp / "tls"
    tls.mkdir()
    for name in set(re.findall(re.escape(TLS_DIR) + r"([\w.-]+)", text)):
        source = "ca.pem" if name == "ca.pem" else "client.key" if name.endswith(".key") \
            else "client.pem"
        shutil.copy(certs / source, tls / name)
    conf = tmp / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{tmp}")\n' + text.replace(TLS_DIR, f"{tls}/"))
    return conf


def action_blocks(text: str) -> list[str]:
    """Every `action(...)` in the text, commented-out examples included, matched with quotes
    respected (a parenthesis inside a value does not end the block)."""
    text = "\n".join(line.lstrip().lstrip("#") for line in text.splitlines())
    blocks = []
    for start in (m.start() for m in re.finditer(r"\baction\(", text)):
        depth, quoted = 0, False
        for end in range(start + len("action"), len(text)):
            ch = text[end]
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch == "(":
                depth += 1
            elif not quoted and ch == ")":
                depth -= 1
                if depth == 0:
                    blocks.append(text[start:end + 1])
                    break
        else:
            raise AssertionError(f"unterminated action( at {start}")
    return blocks


def test_every_snippet_named_by_the_task_is_there():
    assert {p.name for p in CONFS} >= {"james-imfile-relp.conf", "kopano-apache-imfile-relp.conf",
                                       "dovecot-postfix-relp.conf", "forward-tls-ossl.conf"}


@pytest.mark.parametrize("snippet", CONFS, ids=lambda p: p.name)
def test_rsyslog_accepts_the_snippet(snippet: Path, certs: Path, tmp_path: Path):
    conf = loadable_copy(snippet, certs, tmp_path)
    result = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True,
                            timeout=30)
    output = result.stderr + result.stdout
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output


@pytest.mark.parametrize("snippet", CONFS, ids=lambda p: p.name)
def test_every_relp_action_has_window_1024_and_a_disk_assisted_queue(snippet: Path):
    relp = [b for b in action_blocks(snippet.read_text()) if 'type="omrelp"' in b]
    if "relp" in snippet.name or "tls" in snippet.name:
        assert relp, "no omrelp action found"
    for block in relp:
        assert 'windowSize="1024"' in block, block
        assert 'queue.type="LinkedList"' in block and "queue.filename=" in block, block
        assert 'action.resumeRetryCount="-1"' in block, block


@pytest.mark.parametrize("snippet", CONFS, ids=lambda p: p.name)
def test_the_header_says_where_it_goes_and_which_listener_it_targets(snippet: Path):
    lines = snippet.read_text().splitlines()
    header = "\n".join(line for line in lines[:next(i for i, line in enumerate(lines)
                                                    if not line.startswith("#"))])
    assert re.match(r"# On (the|a) ", header)
    assert "/etc/rsyslog.d/" in header
    assert set(re.findall(r"192\.0\.2\.1:(\d+)", header)) & LISTENERS, header


def test_the_log4j2_alternative_sends_one_escaped_rfc5424_line_per_event():
    root = ET.parse(SOURCES / "james-log4j2-syslog.xml").getroot()
    assert root.tag == "Configuration"
    properties = {p.get("name"): p.text or "" for p in root.iter("Property")}
    socket = root.find("./Appenders/Socket")
    assert socket is not None and socket.get("protocol") == "TCP"
    layout = socket.find("PatternLayout")
    assert layout is not None and layout.get("alwaysWriteExceptions") == "false"
    pattern = re.sub(r"\$\{(\w+)\}", lambda m: properties.get(m.group(1), m.group(0)),
                     layout.get("pattern", ""))
    assert re.match(r"<%level\{[^}]*\}>1 %d\{[^}]*\}\{UTC\} \$\{hostName\} james - - - ", pattern)
    assert "%enc{%m}{CRLF}" in pattern and pattern.endswith("%n")
    assert "%m" not in pattern.replace("%enc{%m}{CRLF}", "")  # no raw message anywhere
    refs = {r.get("ref") for r in root.iter("AppenderRef")}
    assert socket.get("name") in {r.get("ref") for a in root.iter("Async")
                                  for r in a.iter("AppenderRef")}
    assert {a.get("name") for a in root.iter("Async")} <= refs


def test_the_readme_lists_every_snippet():
    readme = (SOURCES / "README.md").read_text()
    for path in SOURCES.iterdir():
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, path.name
