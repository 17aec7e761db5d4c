"""The control API in-process, on a real Unix socket: hostile and malformed requests get a
clear 400 and the server lives on; a stranger is refused even through a socket left open by
mistake; the socket file is guarded; what the CLI prints cannot drive a terminal."""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from bansink import ctl
from bansink.actions.dryrun import DryRunBackend
from bansink.bans import BanBook
from bansink.config import parse_config
from bansink.control import ControlError, ControlServer
from bansink.enforcer import Enforcer
from bansink.jails import build_pipeline

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def serve(tmp_path, scenario):
    """Run `scenario(server, post)` against a ControlServer at tmp_path/run/control.sock."""
    config = parse_config({"receiver": {"senders": ["192.0.2.2/32"]}})

    async def main():
        enforcer = Enforcer(DryRunBackend(), 0.001)
        book = BanBook(build_pipeline(config), enforcer, None, findtime=lambda jail: 600.0)
        server = ControlServer(book, None, tmp_path / "run" / "control.sock")
        await server.start()
        connector = aiohttp.UnixConnector(path=str(server.path))
        async with aiohttp.ClientSession(connector=connector) as session:
            async def post(path: str, data: bytes | str) -> tuple[int, dict]:
                async with session.post(f"http://bansink{path}", data=data) as response:
                    return response.status, await response.json(content_type=None)
            try:
                return await scenario(server, post)
            finally:
                await server.stop()
                await enforcer.close()

    return asyncio.run(main())


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/v1/ban", b"{not json", "not JSON"),
    ("/v1/ban", b'["203.0.113.7"]', "must be a JSON object"),
    ("/v1/ban", b"{}", "'target' is required"),
    ("/v1/ban", b'{"target": 7}', "'target' must be a string"),
    ("/v1/ban", b'{"target": "203.0.113.7; rm -rf /"}', "not an address or a network"),
    ("/v1/ban", b'{"target": "0.0.0.0/0"}', "every address is refused"),
    ("/v1/ban", b'{"target": "192.0.2.2"}', "protected (sender"),
    ("/v1/ban", b'{"target": "203.0.113.7", "for": "-1h"}', "'for'"),
    ("/v1/ban", b'{"target": "203.0.113.7", "for": "400d"}', "365 days"),
    ("/v1/ban", b'{"target": "203.0.113.7", "jail": "nope"}', "no jail 'nope'"),
    ("/v1/allow", json.dumps({"target": "203.0.113.7", "note": "x" * 501}).encode(),
     "'note' is longer than 500"),
    ("/v1/disallow", b'{"target": "203.0.113.7"}', "no allow entry"),
])
def test_a_bad_request_is_refused_with_the_reason_and_the_server_lives_on(tmp_path, path, body,
                                                                          words):
    async def scenario(server, post):
        refused = await post(path, body)
        fine = await post("/v1/ban", b'{"target": "203.0.113.9", "for": "1h"}')
        return refused, fine

    (status, answer), fine = serve(tmp_path, scenario)
    assert status == 400 and words in answer["error"]
    assert fine == (200, {"banned": "203.0.113.9", "jail": "manual", "for": 3600.0})


def test_an_oversized_request_is_refused(tmp_path):
    async def scenario(server, post):
        return await post("/v1/ban", b'{"target": "' + b"1" * 100_000 + b'"}')

    status, answer = serve(tmp_path, scenario)
    assert status == 413 and "maximum request body size" in answer["error"].lower()


def test_a_stranger_is_refused_even_through_a_socket_left_open():
    async def scenario(server, post):
        os.chmod(server.path.parent, 0o755)
        os.chmod(server.path, 0o666)  # a mistake: the file mode alone would let anyone in
        code = ("import asyncio, aiohttp, sys\n"
                "async def main():\n"
                "    c = aiohttp.UnixConnector(path=sys.argv[1])\n"
                "    async with aiohttp.ClientSession(connector=c) as s:\n"
                "        async with s.post('http://b/v1/unban', json={'target': '1.2.3.4'}) as r:\n"
                "            print(r.status)\n"
                "asyncio.run(main())\n")
        done = await asyncio.to_thread(
            subprocess.run, [*NOBODY, sys.executable, "-c", code, str(server.path)],
            capture_output=True, text=True, timeout=30)
        return done, server.refused

    with tempfile.TemporaryDirectory(prefix="bansink-test-") as name:  # one nobody can reach
        os.chmod(name, 0o755)
        done, refused = serve(Path(name), scenario)
    assert done.stdout.strip() == "403", done.stderr
    assert refused == 1


def test_the_socket_is_private_and_a_live_one_is_not_taken_over(tmp_path):
    async def scenario(server, post):
        mode = server.path.stat().st_mode & 0o777, server.path.parent.stat().st_mode & 0o777
        second = ControlServer(server.book, None, server.path)
        with pytest.raises(ControlError, match="in use"):
            await second.start()
        return mode

    assert serve(tmp_path, scenario) == (0o600, 0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ControlError, match="world-writable"):
        ControlServer(None, None, shared / "control.sock")._prepare()  # type: ignore[arg-type]


def test_what_the_cli_prints_cannot_drive_a_terminal():
    hostile = "evil\x1b[2J\x1b]0;owned\x07"
    text = ctl._bans({"bans": [{"target": "203.0.113.7", "jail": "manual", "origin": "manual",
                                "failures": 0, "started_at": None, "ends_at": None,
                                "left": None, "note": hostile}]})
    explained = ctl._explain({
        "address": "203.0.113.7", "banned": True, "running_bans": [], "failures_now": {},
        "protected_by": [f"allow entry 203.0.113.7 ({hostile})"],
        "bans": [{"id": 1, "target": "203.0.113.7", "jail": "j", "origin": "jail",
                  "failures": 1, "started": "t", "ends": None, "lifted": None,
                  "lifted_by": None, "escalation_step": 0, "note": hostile,
                  "messages": [{"time": "t", "source": "s", "sender": "p", "transport": "tcp",
                                "raw": f"user={hostile}"}]}],
        "messages": []})
    for out in (text, explained):
        assert "\x1b" not in out and "\x07" not in out
        assert "\\x1b[2J" in out


def test_the_bans_list_comes_in_pages(tmp_path):
    async def scenario(server, post):
        for i in range(5):
            assert (await post("/v1/ban", f'{{"target": "203.0.113.{i}", "for": "{i + 1}h"}}'
                               ))[0] == 200
        connector = aiohttp.UnixConnector(path=str(server.path))
        async with aiohttp.ClientSession(connector=connector) as session:
            async def get(query: str) -> tuple[int, dict]:
                async with session.get(f"http://bansink/v1/bans{query}") as response:
                    return response.status, await response.json()
            for _ in range(100):  # the commit
                if server.book.enforcer.counters()["bans_running"] == 5:
                    break
                await asyncio.sleep(0.01)
            return [await get(q) for q in ("", "?limit=2&offset=1", "?offset=4", "?limit=x",
                                           "?offset=-1")]

    every, page, tail, bad, negative = serve(tmp_path, scenario)
    assert every[0] == 200 and every[1]["total"] == 5
    assert [b["target"] for b in every[1]["bans"]] == [f"203.0.113.{i}" for i in range(5)]
    def targets(answer: tuple[int, dict]) -> tuple[int, list[str], int]:
        return answer[0], [b["target"] for b in answer[1]["bans"]], answer[1]["total"]

    assert targets(page) == (200, ["203.0.113.1", "203.0.113.2"], 5)
    assert targets(tail) == (200, ["203.0.113.4"], 5)
    assert bad[0] == negative[0] == 400 and "'limit' must be a whole number" in bad[1]["error"]
