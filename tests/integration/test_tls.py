"""TLS with real rsyslog: omfwd over TLS (RFC 5425) and omrelp tls="on", client certificates."""

from pathlib import Path

import pytest

from lab import PROXY4, PROXY4_ATK, Lab, Rsyslog, login_failed
from support import Daemon, make_certificates, wait_until

TLS_PORT, RELP_TLS_PORT = 6514, 20515


def make_proxy_certificates(d: Path) -> Path:
    return make_certificates(d, f"DNS:proxy.example,IP:{PROXY4}")


def tls_config(d: Path, names: str = '["webmail.example"]') -> str:
    return f"""
[receiver]
senders = ["192.0.2.2/32"]
udp = []
tcp = []
relp = []
tls = ["0.0.0.0:{TLS_PORT}"]
relp_tls = ["0.0.0.0:{RELP_TLS_PORT}"]
[receiver.tls_settings]
certificate = "{d}/server.pem"
key = "{d}/server.key"
client_ca = "{d}/ca.pem"
client_names = {names}
[jail]
maxretry = 3
[log]
format = "json"
"""


@pytest.fixture
def certs(tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    return make_proxy_certificates(d)


def omfwd_tls(d: Path, who: str = "client") -> str:
    return (f'global(DefaultNetstreamDriverCAFile="{d}/ca.pem" '
            f'DefaultNetstreamDriverCertFile="{d}/{who}.pem" '
            f'DefaultNetstreamDriverKeyFile="{d}/{who}.key")\n'
            f'action(type="omfwd" target="{PROXY4}" port="{TLS_PORT}" protocol="tcp" '
            'TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format" '
            'StreamDriver="ossl" StreamDriverMode="1" StreamDriverAuthMode="x509/name" '
            'StreamDriverPermittedPeers="proxy.example")')


def omrelp_tls(d: Path, who: str = "client") -> str:
    return ('module(load="omrelp")\n'
            f'action(type="omrelp" target="{PROXY4}" port="{RELP_TLS_PORT}" tls="on" '
            f'tls.caCert="{d}/ca.pem" tls.myCert="{d}/{who}.pem" tls.myPrivKey="{d}/{who}.key" '
            'tls.authMode="name" tls.permittedPeer=["proxy.example"] '
            'action.resumeRetryCount="-1" action.resumeInterval="1")')


ATTACKERS = [f"203.0.113.{i}" for i in range(1, 6)]


@pytest.mark.parametrize("action", [omfwd_tls, omrelp_tls], ids=["omfwd-tls", "omrelp-tls"])
def test_rsyslog_over_tls_with_client_certificates_delivers_each_message_once(lab: Lab, certs,
                                                                             action):
    lab.daemon = Daemon(lab.proxy, tls_config(certs), lab.tmp)
    rsyslog = Rsyslog(lab.sender, lab.tmp, action(certs))
    lines = [login_failed(ip, user=f"u{n}") for n in range(3) for ip in ATTACKERS]
    lines += [login_failed(f"198.51.100.{i}") for i in range(10, 30)]
    rsyslog.log_lines(lines, lab.tmp)
    transport = "tls" if action is omfwd_tls else "relp_tls"
    wait_until(lambda: lab.daemon.stats()["received"].get(transport, 0) >= len(lines), 30,
               f"all messages over {transport}")
    assert lab.daemon.stats()["received"] == {transport: len(lines)}
    wait_until(lambda: set(lab.proxy.set_elements()) == set(ATTACKERS), 10, "bans")


def test_a_certificate_with_a_name_not_listed_is_refused(lab: Lab, certs):
    lab.daemon = Daemon(lab.proxy, tls_config(certs), lab.tmp)
    Rsyslog(lab.sender, lab.tmp, omrelp_tls(certs, who="stranger")).log(login_failed(ATTACKERS[0]))
    wait_until(lambda: any(d["reason"] == "tls_peer_not_allowed"
                           for d in lab.daemon.lines("drop")), 15, "stranger refused")
    assert lab.daemon.stats()["received"] == {}


def test_a_client_without_certificate_fails_the_handshake(lab: Lab, certs):
    lab.daemon = Daemon(lab.proxy, tls_config(certs), lab.tmp)
    script = (f"import socket, ssl\nctx = ssl.create_default_context(cafile='{certs}/ca.pem')\n"
              f"s = socket.create_connection(('{PROXY4}', {TLS_PORT}), timeout=5)\n"
              "try:\n"
              "    t = ctx.wrap_socket(s, server_hostname='proxy.example')\n"
              "    t.sendall(b'5 <13>x')\n"
              "    print('open' if t.recv(1) else 'closed')\n"
              "except (ssl.SSLError, ConnectionResetError) as exc:\n"
              "    print('refused', type(exc).__name__)\n")
    out = lab.sender.run("python3", "-c", script).stdout.decode()
    assert out.startswith(("refused", "closed"))
    assert lab.daemon.stats()["received"] == {}


def test_non_senders_are_reset_before_a_handshake_and_plain_text_fails_it(lab: Lab, certs):
    lab.daemon = Daemon(lab.proxy, tls_config(certs), lab.tmp)
    handshake = (f"import socket, ssl\nctx = ssl.create_default_context(cafile='{certs}/ca.pem')\n"
                 f"s = socket.create_connection(('{PROXY4_ATK}', {TLS_PORT}), timeout=5)\n"
                 "try:\n"
                 "    ctx.wrap_socket(s, server_hostname='proxy.example')\n"
                 "    print('handshake')\n"
                 "except (ssl.SSLError, OSError) as exc:\n"
                 "    print('refused', type(exc).__name__)\n")
    out = lab.client.run("python3", "-c", handshake).stdout.decode()
    assert out.startswith("refused")  # the attacker's network is no sender: reset at accept
    wait_until(lambda: lab.daemon.stats()["drops"].get("sender_not_allowed"), 10, "refusal")
    plain = (f"import socket\ns = socket.create_connection(('{PROXY4}', {TLS_PORT}), timeout=5)\n"
             "s.sendall(b'<13>Nov 21 10:00:00 web app: plain\\n')\n"
             "try:\n    s.recv(100)\nexcept OSError:\n    pass\n")
    lab.sender.run("python3", "-c", plain)
    wait_until(lambda: lab.daemon.stats()["drops"].get("tls_handshake_failed"), 10,
               "the plain-text connection counted")
    assert lab.daemon.stats()["received"] == {}
