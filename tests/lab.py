"""The integration lab: a reverse proxy running bansink, a webmail host that sends syslog, and a
client that attacks, each in a network namespace the test creates, joined by veth pairs."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import Daemon, Netns, link, namespaces

PORT = 5514
PROXY4, SENDER4, CLIENT4 = "192.0.2.1", "192.0.2.2", "198.51.100.2"
PROXY6, SENDER6 = "2001:db8:1::1", "2001:db8:1::2"
PROXY4_ATK, PROXY6_ATK, CLIENT6 = "198.51.100.1", "2001:db8:2::1", "2001:db8:2::2"


def config(bantime: str = "1h", maxretry: int = 3) -> str:
    return f"""
[receiver]
senders = ["{SENDER4}/32", "{SENDER6}/128"]
udp = ["0.0.0.0:{PORT}", "[::]:{PORT}"]
tcp = ["0.0.0.0:{PORT}", "[::]:{PORT}"]
[jail]
maxretry = {maxretry}
findtime = "1m"
bantime = "{bantime}"
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

    def start(self, **kw) -> Daemon:
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
