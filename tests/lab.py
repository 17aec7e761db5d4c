"""The integration lab: a reverse proxy running bansink, a webmail host that sends syslog, and a
client that attacks, each in a network namespace the test creates, joined by veth pairs."""

import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import Daemon, Netns, link, namespaces, wait_until

PORT = 5514
RELP_PORT = 20514
PROXY4, SENDER4, CLIENT4 = "192.0.2.1", "192.0.2.2", "198.51.100.2"
PROXY6, SENDER6 = "2001:db8:1::1", "2001:db8:1::2"
PROXY4_ATK, PROXY6_ATK, CLIENT6 = "198.51.100.1", "2001:db8:2::1", "2001:db8:2::2"


def config(bantime: str = "1h", maxretry: int = 3, findtime: str = "1m", extra: str = "",
           jail: str = "") -> str:
    """The lab's config; `jail`: more [jail] lines."""
    return extra + f"""
[receiver]
senders = ["{SENDER4}/32", "{SENDER6}/128"]
udp = ["0.0.0.0:{PORT}", "[::]:{PORT}"]
tcp = ["0.0.0.0:{PORT}", "[::]:{PORT}"]
relp = ["0.0.0.0:{RELP_PORT}", "[::]:{RELP_PORT}"]
[jail]
maxretry = {maxretry}
findtime = "{findtime}"
bantime = "{bantime}"
{jail}
[log]
format = "json"
level = "debug"
"""


@dataclass
class Lab:
    proxy: Netns
    sender: Netns
    client: Netns
    tmp: Path

    def start(self, *, prefix: tuple[str, ...] = (), **kw) -> Daemon:
        self.daemon = Daemon(self.proxy, config(**kw), self.tmp, prefix=prefix)
        return self.daemon

    def restart(self, **kw) -> Daemon:
        """A new daemon on the same config and journal (after a stop or a kill)."""
        self.daemon = Daemon(self.proxy, config(**kw), self.tmp)
        return self.daemon


@contextmanager
def make_lab(tmp_path: Path) -> Iterator[Lab]:
    """proxy (bansink) <-> sender (webmail host: rsyslog, logger); proxy <-> client (attacker)."""
    with namespaces("proxy", "sender", "client") as (proxy, sender, client):
        link(proxy, [f"{PROXY4}/24", f"{PROXY6}/64"], sender, [f"{SENDER4}/24", f"{SENDER6}/64"])
        link(proxy, [f"{PROXY4_ATK}/24", f"{PROXY6_ATK}/64"], client,
             [f"{CLIENT4}/24", f"{CLIENT6}/64"])
        yield Lab(proxy, sender, client, tmp_path)


def login_failed(client: str, user: str = "bob") -> str:
    return f'Login failed: client_ip="{client}", host="imap.example", user="{user}", code=0'


class Rsyslog:
    """A private rsyslogd in a namespace: reads TCP on its own loopback (imudp drops bursts),
    forwards with the action given (omfwd, omrelp)."""

    def __init__(self, ns: Netns, tmp: Path, action: str) -> None:
        work = tmp / "rsyslog"
        work.mkdir()
        conf = work / "rsyslog.conf"
        conf.write_text(textwrap.dedent(f"""
            global(workDirectory="{work}")
            module(load="imtcp")
            input(type="imtcp" address="127.0.0.1" port="5140")
            {action}
        """))
        self.ns = ns
        self.proc = ns.popen("rsyslogd", "-n", "-f", str(conf), "-i", str(work / "pid"),
                             stdout=subprocess.DEVNULL, stderr=(work / "err").open("wb"))
        wait_until(lambda: self.proc.poll() is not None or b":5140" in
                   ns.run("ss", "-Hltn").stdout, 10, "rsyslogd to listen")
        assert self.proc.poll() is None, (work / "err").read_text()

    def log(self, message: str) -> None:
        self.ns.run("logger", "-n", "127.0.0.1", "-P", "5140", "--tcp", "--rfc3164",
                    "-t", "roundcube", "-p", "authpriv.warning", message)

    def log_lines(self, lines: list[str], tmp: Path) -> None:
        """One message per line, in order, from one logger process."""
        path = tmp / f"lines-{len(lines)}-{id(lines)}.txt"
        path.write_text("\n".join(lines) + "\n")
        self.ns.run("logger", "-n", "127.0.0.1", "-P", "5140", "--tcp", "--rfc3164",
                    "-t", "roundcube", "-p", "authpriv.warning", "-f", str(path), timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
