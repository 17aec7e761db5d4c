"""/metrics and notifications of a real daemon: messages from the webmail host's `logger` over
UDP and TCP (IPv4 and IPv6), the kernel's set in a namespace, the metrics read through the
control socket with prometheus_client's parser; a webhook inside the proxy's namespace that
hears of new bans and never of those restored at start."""

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.parser import text_string_to_metric_families
from test_metrics import assert_no_address_in_labels

from lab import PORT, PROXY4, PROXY6, Lab, login_failed
from support import wait_until

ATTACKER, LATER = "203.0.113.7", "203.0.113.9"
NAMES = '[[metrics.senders]]\nname = "webmail"\nnetworks = ["192.0.2.2", "2001:db8:1::2"]\n'


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("bansink", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def scrape(lab: Lab) -> str:
    connection = UnixConnection(str(lab.daemon.control))
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def send(lab: Lab, lines: list[str], *, udp: bool, server: str = PROXY4) -> None:
    path = lab.tmp / f"lines-{time.monotonic_ns()}.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    lab.sender.run("logger", "-n", server, "-P", str(PORT), "--udp" if udp else "--tcp",
                   "--rfc3164", "-t", "roundcube", "-f", str(path))


def test_counters_move_as_messages_arrive_over_udp_and_tcp_and_no_label_is_an_address(lab: Lab):
    lab.start(maxretry=3, extra=NAMES)
    text = scrape(lab)
    assert value(text, "bansink_messages_received_total", transport="udp", sender="webmail") == 0
    quiet = [login_failed(f"198.51.100.{i}") for i in range(10)]
    send(lab, quiet, udp=True)
    wait_until(lambda: value(scrape(lab), "bansink_messages_received_total", transport="udp",
                             sender="webmail") == 10, 10, "10 UDP messages counted")
    send(lab, [login_failed(ATTACKER)] * 3, udp=False)
    send(lab, [login_failed("198.51.100.50")] * 2, udp=False, server=PROXY6)
    wait_until(lambda: set(lab.proxy.set_elements()) == {ATTACKER}, 10, "the ban")
    wait_until(lambda: value(scrape(lab), "bansink_messages_received_total", transport="tcp",
                             sender="webmail") == 5, 10, "5 TCP messages counted")
    text = scrape(lab)
    assert value(text, "bansink_events_total", source="roundcube") == 15
    assert value(text, "bansink_failures_total", jail="roundcube") == 15
    assert value(text, "bansink_bans_total", jail="roundcube", origin="jail") == 1
    assert value(text, "bansink_bans_active", jail="roundcube", origin="jail") == 1
    assert value(text, "f2b_jail_banned_current", jail="roundcube") == 1
    assert value(text, "bansink_time_to_ban_seconds_count") == 1
    assert 0 < value(text, "bansink_time_to_ban_seconds_sum") < 2
    assert value(text, "bansink_nft_transaction_seconds_count") >= 1
    assert value(text, "bansink_journal_bytes", file="db") > 0
    assert value(text, "bansink_relp_unacknowledged_frames", transport="relp") == 0
    assert_no_address_in_labels(text)
    assert ATTACKER not in text and "192.0.2.2" not in text  # nowhere, labels or not


class Hook(BaseHTTPRequestHandler):
    bodies: list[dict]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def webhook_in(lab: Lab) -> tuple[ThreadingHTTPServer, list[dict], int]:
    """A webhook on the proxy namespace's loopback (where the daemon runs)."""
    bodies: list[dict] = []
    sock = lab.proxy.in_namespace(lambda: socket.create_server(("127.0.0.1", 0)))
    handler = type("RecordingHook", (Hook,), {"bodies": bodies})
    server = ThreadingHTTPServer(sock.getsockname(), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bodies, sock.getsockname()[1]


def test_a_new_ban_is_told_at_once_and_a_ban_restored_at_start_is_not(lab: Lab):
    server, bodies, port = webhook_in(lab)
    notify = (f'[notify]\nwindow = "10m"\n[notify.webhook]\n'
              f'url = "http://127.0.0.1:{port}/hook"\n')
    try:
        lab.start(maxretry=3, extra=notify)
        send(lab, [login_failed(ATTACKER)] * 3, udp=False)
        wait_until(lambda: len(bodies) == 1, 10, "the first ban's message")
        assert bodies[0]["event"] == "ban" and bodies[0]["ban"]["target"] == ATTACKER
        assert lab.daemon.stop() == 0

        lab.restart(maxretry=3, extra=notify)
        assert lab.daemon.lines("bans_restored")[-1]["bans"] == 1
        send(lab, [login_failed(LATER)] * 3, udp=False)
        wait_until(lambda: len(bodies) >= 2, 10, "the new ban's message")
        # the restored ban would have been told at start, before this one: it was not
        assert [b["ban"]["target"] for b in bodies] == [ATTACKER, LATER]
        # told when decided: the element follows at the next commit tick
        wait_until(lambda: set(lab.proxy.set_elements()) == {ATTACKER, LATER}, 5, "both bans")
        text = scrape(lab)
        assert value(text, "bansink_notifications_sent_total", channel="webhook",
                     kind="ban") == 1
        assert value(text, "bansink_bans_total", jail="roundcube", origin="jail") == 1
    finally:
        server.shutdown()
        server.server_close()
