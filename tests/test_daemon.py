"""The Daemon in-process (dry-run backend, no journal): start, reload, stop."""

import asyncio
import socket
import ssl

import pytest
from structlog.testing import capture_logs

from bansink.actions.dryrun import DryRunBackend
from bansink.config import ConfigError, parse_config
from bansink.daemon import Daemon, ListenError

from streams import LOOPS
from support import make_certificates, until

LINE = (b'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="203.0.113.7", '
        b'user="u", code=0')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(port: int, **jail):
    return parse_config({
        "receiver": {"udp": [f"127.0.0.1:{port}"], "tcp": [], "relp": [],
                     "senders": ["127.0.0.1/32"]},
        "engine": {"ignoreip": []},
        "jail": {"maxretry": 5, **jail},
        "journal": {"path": ""}, "control": {"socket": ""},
    })


def test_a_reload_applies_jail_and_sender_changes_at_once_and_names_what_needs_a_restart():
    port = free_port()
    backend = DryRunBackend()

    async def scenario():
        daemon = Daemon(config(port), backend)
        await daemon.start()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.sendto(LINE, ("127.0.0.1", port))
            await until(lambda: daemon.pipeline.tracked == 1)
            new = config(port, maxretry=2)
            restart = await daemon.reload(new.model_copy(update={
                "receiver": new.receiver.model_copy(update={"senders": ["127.0.0.2/32"]}),
                "log": new.log.model_copy(update={"level": "debug"})}))
            assert restart == ["log.level"]
            assert daemon.config.log.level == "info"  # what runs, not what was asked for
            assert await daemon.reload(new) == []  # nothing else asked: nothing waits
            await daemon.reload(new.model_copy(update={
                "receiver": new.receiver.model_copy(update={"senders": ["127.0.0.2/32"]})}))
            sender.sendto(LINE, ("127.0.0.1", port))  # 127.0.0.1 is no sender any more
            await until(lambda: daemon.stats()["drops"].get("sender_not_allowed") == 1)
            assert daemon._admit("127.0.0.2") == "127.0.0.2"
            assert daemon.pipeline.jails[0].settings.maxretry == 2
            assert daemon.pipeline.tracked == 1  # the jail kept its failures
        finally:
            sender.close()
            daemon.stop()
            await daemon.close()
        return daemon

    daemon = asyncio.run(scenario())
    assert daemon.stats()["received"] == {"udp": 1}  # the second was dropped at admission


def test_a_bad_config_on_reload_keeps_the_running_one():
    port = free_port()

    def broken():
        raise ConfigError("bansink.toml: jail.maxretry: must be at most 1000")

    async def scenario():
        daemon = Daemon(config(port), DryRunBackend(), reread=broken)
        await daemon.start()
        try:
            assert not await daemon.reload_from_file()
            return daemon.pipeline.jails[0].settings.maxretry
        finally:
            daemon.stop()
            await daemon.close()

    assert asyncio.run(scenario()) == 5


def test_run_stops_on_request_and_closes_its_listeners():
    port = free_port()

    async def scenario():
        daemon = Daemon(config(port), DryRunBackend())
        task = asyncio.create_task(daemon.run())
        await until(lambda: daemon.listeners and daemon.hub is not None)
        daemon.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the port is free again


def test_a_reload_closes_the_connections_of_a_sender_no_longer_listed():
    port = free_port()
    base = config(port)
    tcp = base.model_copy(update={"receiver": base.receiver.model_copy(
        update={"tcp": [("127.0.0.1", port)]})})

    async def scenario():
        daemon = Daemon(tcp, DryRunBackend())
        await daemon.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(LINE + b"\n")
            await until(lambda: daemon.stats()["received"].get("tcp") == 1)
            await daemon.reload(tcp.model_copy(update={"receiver": tcp.receiver.model_copy(
                update={"senders": ["192.0.2.1/32"]})}))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by bansink
            writer.close()
            assert daemon.stats()["drops"] == {"sender_not_allowed": 1}
        finally:
            daemon.stop()
            await daemon.close()

    asyncio.run(scenario())


def test_a_reload_may_not_stretch_findtime_past_the_running_retention(tmp_path):
    port = free_port()
    base = config(port)
    with_journal = base.model_copy(update={"journal": base.journal.model_copy(
        update={"path": str(tmp_path / "j.db"), "retention": 3600.0})})

    async def scenario():
        daemon = Daemon(with_journal, DryRunBackend())
        await daemon.start()
        try:
            longer = with_journal.model_copy(update={"jail": with_journal.jail.model_copy(
                update={"findtime": 7200.0})})
            with pytest.raises(ValueError, match="retention"):
                await daemon.reload(longer)
            return daemon.pipeline.jails[0].settings.findtime
        finally:
            daemon.stop()
            await daemon.close()

    assert asyncio.run(scenario()) == 600.0


def test_a_reload_gives_the_backend_the_new_jails_and_rate_limits():
    port = free_port()
    backend = DryRunBackend()

    def jails(**extra):
        return parse_config({
            "receiver": {"udp": [f"127.0.0.1:{port}"], "tcp": [], "relp": [],
                         "senders": ["127.0.0.1/32"]},
            "jails": {"kerio": {"sources": ["kerio"], "ports": "smtp"}, **extra},
            "journal": {"path": ""}, "control": {"socket": ""}})

    async def scenario():
        daemon = Daemon(jails(), backend)
        await daemon.start()
        try:
            assert [scope.name for scope in backend.layout.jails] == ["kerio"]
            new = jails(james={"sources": ["james"]}).model_copy(update={"ratelimit": parse_config(
                {"ratelimit": {"smtp": {"ports": 25}}}).ratelimit})
            assert await daemon.reload(new) == []
            assert len(backend.layout.jails) == 2
            assert [r.name for r in backend.layout.ratelimits] == ["smtp"]
        finally:
            daemon.stop()
            await daemon.close()

    asyncio.run(scenario())


def listening(config, **receiver):
    """`config` with these [receiver] keys (lists of (host, port))."""
    return config.model_copy(update={"receiver": config.receiver.model_copy(update=receiver)})


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def on_loop(loop_factory, coro):
    """Run `coro` on that kind of event loop (the daemon runs on uvloop where installed)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


async def running(config, scenario, backend=None):
    daemon = Daemon(config, backend or DryRunBackend())
    await daemon.start()
    try:
        return await scenario(daemon)
    finally:
        daemon.stop()
        await daemon.close()


def listeners_of(daemon) -> dict:
    """(transport, port) -> the running listener."""
    return {(listener.transport_name, listener.port): listener for listener in daemon.listeners}


def received(daemon, transport: str) -> int:
    return daemon.stats()["received"].get(transport, 0)


def test_a_reload_opens_added_listeners_retires_removed_ones_and_leaves_the_rest_untouched():
    udp, kept, added = free_port(), free_tcp_port(), free_tcp_port()
    base = listening(config(udp), tcp=[("127.0.0.1", kept)])

    async def scenario(daemon):
        before = listeners_of(daemon)
        reader, writer = await asyncio.open_connection("127.0.0.1", kept)
        writer.write(LINE + b"\n")
        await until(lambda: received(daemon, "tcp") == 1)
        assert await daemon.reload(listening(base, udp=[], relp=[("127.0.0.1", added)])) == []
        after = listeners_of(daemon)
        assert set(after) == {("tcp", kept), ("relp", added)}
        assert after[("tcp", kept)] is before[("tcp", kept)]  # the same socket, not re-opened
        writer.write(LINE + b"\n")  # the connection open across the reload still delivers
        await until(lambda: received(daemon, "tcp") == 2)
        _, relp = await asyncio.open_connection("127.0.0.1", added)  # the added one accepts
        relp.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", udp))  # the removed UDP port is free
        await daemon.reload(listening(base, udp=[]).model_copy(update={
            "receiver": base.receiver.model_copy(update={"udp": [], "tcp": []})}))
        assert await refused(kept)  # removed: refused at once ...
        assert await asyncio.wait_for(reader.read(), 5) == b""  # ... its connection told (FIN)
        writer.write(LINE + b"\n")  # and what the sender still had in flight is taken
        await until(lambda: received(daemon, "tcp") == 3)
        writer.close()
        await until(lambda: not daemon._listeners.retiring)
        assert daemon.listeners == []

    asyncio.run(running(base, scenario))


def test_an_address_that_cannot_be_bound_refuses_the_whole_reload_and_changes_nothing():
    udp, kept, fine = free_port(), free_tcp_port(), free_tcp_port()
    base = listening(config(udp), tcp=[("127.0.0.1", kept)])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]

    async def scenario(daemon):
        asked = listening(config(udp, maxretry=2), udp=[],
                          tcp=[("127.0.0.1", fine), ("127.0.0.1", busy)])
        with pytest.raises(ListenError, match=rf"^receiver\.tcp: cannot listen on tcp "
                                              rf"127\.0\.0\.1:{busy}: Address already in use$"):
            await daemon.reload(asked)
        assert daemon.config == base
        assert daemon.pipeline.jails[0].settings.maxretry == 5
        assert sorted(listeners_of(daemon)) == [("tcp", kept), ("udp", udp)]
        assert await refused(fine)  # what it had opened for the reload is closed again
        _, writer = await asyncio.open_connection("127.0.0.1", kept)  # the old one accepts
        writer.write(LINE + b"\n")
        await until(lambda: received(daemon, "tcp") == 1)
        writer.close()

    try:
        asyncio.run(running(base, scenario))
    finally:
        taken.close()


def test_a_bad_listener_on_sighup_is_logged_with_its_key_and_the_running_config_stays(tmp_path):
    port = free_port()
    base = config(port)
    asked = listening(base, tcp=[("192.0.2.77", 5514)])  # not an address of this host

    async def scenario(daemon):
        with capture_logs() as logs:
            assert not await daemon.reload_from_file()
        (failed,) = [entry for entry in logs if entry["event"] == "reload_failed"]
        assert failed["error"].startswith("receiver.tcp: cannot listen on tcp 192.0.2.77:5514")
        assert daemon.config == base and len(daemon.listeners) == 1

    daemon = Daemon(base, DryRunBackend(), reread=lambda: asked)

    async def run():
        await daemon.start()
        try:
            await scenario(daemon)
        finally:
            daemon.stop()
            await daemon.close()

    asyncio.run(run())


@pytest.mark.parametrize("loop", LOOPS)
def test_one_address_can_change_transport_on_a_reload(loop):
    udp, port = free_port(), free_tcp_port()
    base = listening(config(udp), tcp=[("127.0.0.1", port)])

    async def scenario(daemon):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await daemon.reload(listening(base, tcp=[], relp=[("127.0.0.1", port)]))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the TCP session retires
        writer.close()
        relp_reader, relp = await asyncio.open_connection("127.0.0.1", port)
        offers = b"relp_version=0\ncommands=syslog"
        relp.write(b"1 open %d %s\n" % (len(offers), offers))
        assert (await asyncio.wait_for(relp_reader.readline(), 5)).startswith(b"1 rsp ")
        relp.close()

    on_loop(loop, running(base, scenario))


def test_failure_counts_survive_reloads_that_move_listeners_and_change_maxretry():
    port, tcp = free_port(), free_tcp_port()
    base = config(port, maxretry=5)

    async def scenario(daemon):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(2):
                sender.sendto(LINE, ("127.0.0.1", port))
            await until(lambda: daemon.stats()["outcomes"].get("Counted") == 2)
            await daemon.reload(listening(config(port, maxretry=3), tcp=[("127.0.0.1", tcp)]))
            await daemon.reload(listening(config(port, maxretry=3), tcp=[("127.0.0.1", tcp)]))
            sender.sendto(LINE, ("127.0.0.1", port))  # the third failure: 3 = the new maxretry
            await until(lambda: daemon.stats()["outcomes"].get("Banned") == 1)
        finally:
            sender.close()

    asyncio.run(running(base, scenario))


def test_a_reload_reads_a_renewed_tls_certificate_and_open_tls_connections_go_on(tmp_path):
    for name in ("first", "second", "live"):
        (tmp_path / name).mkdir()
    first = make_certificates(tmp_path / "first", "IP:127.0.0.1")
    second = make_certificates(tmp_path / "second", "IP:127.0.0.1")
    live = tmp_path / "live"

    def install(d):
        for name in ("server.pem", "server.key"):
            (live / name).write_bytes((d / name).read_bytes())

    install(first)
    udp, port = free_port(), free_tcp_port()
    base = parse_config({
        "receiver": {"udp": [f"127.0.0.1:{udp}"], "tcp": [], "relp": [],
                     "tls": [f"127.0.0.1:{port}"], "senders": ["127.0.0.1/32"],
                     "tls_settings": {"certificate": str(live / "server.pem"),
                                      "key": str(live / "server.key")}},
        "engine": {"ignoreip": []}, "journal": {"path": ""}, "control": {"socket": ""}})

    def trusting(d):
        return ssl.create_default_context(cafile=str(d / "ca.pem"))

    async def syslog_tls(writer, n):
        frame = LINE.replace(b"203.0.113.7", b"203.0.113.%d" % n)
        writer.write(b"%d %s" % (len(frame), frame))
        await writer.drain()

    async def scenario(daemon):
        _, old = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(first))
        await syslog_tls(old, 1)
        await until(lambda: received(daemon, "tls") == 1)
        install(second)
        (live / "server.key").write_text("not a key")  # renewed halfway: refused, old one runs
        with pytest.raises(ListenError, match=r"^receiver\.tls_settings: "):
            await daemon.reload(base)
        _, still_first = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(first))
        still_first.close()
        install(second)
        await daemon.reload(base)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=trusting(first))
        _, new = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(second))
        await syslog_tls(new, 2)
        await syslog_tls(old, 3)  # the connection made with the old certificate goes on
        await until(lambda: received(daemon, "tls") == 3)
        for writer in (old, new):
            writer.close()

    asyncio.run(running(base, scenario))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_listener_can_move_from_the_wildcard_address_to_one_address_on_the_same_port(loop):
    udp, port = free_port(), free_tcp_port()
    base = listening(config(udp), tcp=[("0.0.0.0", port)])

    async def scenario(daemon):
        await daemon.reload(listening(base, tcp=[("127.0.0.1", port)]))
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(LINE + b"\n")
        await until(lambda: received(daemon, "tcp") == 1)
        writer.close()
        with pytest.raises(ConnectionRefusedError):  # no longer on every address
            await asyncio.open_connection("127.0.0.2", port)

    on_loop(loop, running(base, scenario))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_port_given_up_for_a_reload_that_then_fails_is_taken_back(loop):
    udp, port = free_port(), free_tcp_port()
    base = listening(config(udp), tcp=[("127.0.0.1", port)])
    stranger = socket.socket()  # another program on the same port, another address
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    stranger.bind(("127.0.0.2", port))
    stranger.listen()

    async def scenario(daemon):
        with pytest.raises(ListenError, match=rf"^receiver\.relp: .*0\.0\.0\.0:{port}: "
                                              rf"Address already in use$"):
            await daemon.reload(listening(base, tcp=[], relp=[("0.0.0.0", port)]))
        assert sorted(listeners_of(daemon)) == [("tcp", port), ("udp", udp)]
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # listening again
        writer.write(LINE + b"\n")
        await until(lambda: received(daemon, "tcp") == 1)
        writer.close()

    try:
        on_loop(loop, running(base, scenario))
    finally:
        stranger.close()
