"""The Daemon in-process (dry-run backend, no journal): start, reload, stop."""

import asyncio
import socket

import pytest

from bansink.actions.dryrun import DryRunBackend
from bansink.config import ConfigError, parse_config
from bansink.daemon import Daemon

from support import until

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
