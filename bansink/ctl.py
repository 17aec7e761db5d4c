"""The admin's commands (`bansink status`, `bans`, `ban`, `unban`, `allow`, `disallow`,
`allows`, `history`, `explain`): requests to the running daemon's control socket, answered as
readable tables for people or, with --json, the API's own JSON for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp


class ControlUnreachable(Exception):
    pass


class Refused(Exception):
    """The daemon answered with an error."""


async def _request(socket: str, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: dict[str, Any] | None = None) -> Any:
    connector = aiohttp.UnixConnector(path=socket)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.request(method, f"http://bansink{path}", params=params,
                                       json=body) as response:
                answer = await response.json(content_type=None)
                if response.status != 200:
                    raise Refused(answer.get("error", f"HTTP {response.status}")
                                  if isinstance(answer, dict) else f"HTTP {response.status}")
                return answer
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or str(exc.os_error)
        raise ControlUnreachable(
            f"cannot reach the daemon at {socket}: {reason} (is bansink running? the socket "
            f"is for root and the members of control.group)") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ControlUnreachable(f"the daemon at {socket} did not answer: {exc!r}") from None


def _when(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _left(seconds: int | None) -> str:
    if seconds is None:
        return "until unbanned"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    parts += [f"{secs}s"] if not days and not hours else []
    return "".join(parts) or "0s"


def printable(text: object) -> str:
    """Text as it may reach a terminal: control characters (an escape sequence in a note)
    shown escaped, not obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def table(header: list[str], rows: list[list[str]]) -> str:
    cells = [[printable(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*cells, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in cells]
    return "\n".join(lines)


def _status(answer: dict[str, Any]) -> str:
    out = []
    for name, jail in answer["jails"].items():
        total = "-" if jail["total_banned"] is None else jail["total_banned"]
        out.append(f"Status for the jail: {name}\n"
                   f"|- Filter\n"
                   f"|  |- Currently failed: {jail['currently_failed']}\n"
                   f"|  `- Total failed:     {jail['total_failed']}\n"
                   f"`- Actions\n"
                   f"   |- Currently banned: {jail['currently_banned']}\n"
                   f"   |- Total banned:     {total}\n"
                   f"   `- Banned IP list:   "
                   + " ".join(f"{b['target']} ({_left(b['left'])})" for b in jail["banned"]))
    return "\n".join(out)


def _bans(answer: dict[str, Any]) -> str:
    rows = [[b["target"], b["jail"], b["origin"], str(b["failures"]), _when(b["started_at"]),
             _when(b["ends_at"]), _left(b["left"]), b["note"]] for b in answer["bans"]]
    if not rows:
        return "no running bans"
    return table(["TARGET", "JAIL", "ORIGIN", "FAILURES", "STARTED", "ENDS", "LEFT", "NOTE"],
                 rows)


def _allows(answer: dict[str, Any]) -> str:
    rows = [[a["target"], _when(a["created_at"]), _when(a["until"]) if a["until"] else "always",
             a["note"]] for a in answer["allows"]]
    return table(["TARGET", "SINCE", "UNTIL", "NOTE"], rows) if rows else "no allow entries"


def _history_rows(bans: list[dict[str, Any]]) -> list[list[str]]:
    return [[b["started"], b["target"], b["jail"], b["origin"], str(b["failures"]),
             b["ends"] or "until unbanned",
             f"{b['lifted_by']} {b['lifted']}" if b["lifted"] else "-",
             str(b["escalation_step"])] for b in bans]


_HISTORY_HEADER = ["STARTED", "TARGET", "JAIL", "ORIGIN", "FAILURES", "ENDS", "LIFTED", "STEP"]


def _history(answer: dict[str, Any]) -> str:
    if not answer["bans"]:
        return f"{answer['address']}: never banned (in the store's history)"
    return table(_HISTORY_HEADER, _history_rows(answer["bans"]))


def _explain(answer: dict[str, Any]) -> str:
    address = answer["address"]
    out = [f"{address}: " + ("BANNED" if answer["banned"] else "not banned")]
    for b in answer["running_bans"]:
        out.append(f"  running: {b['target']} by jail {b['jail']} ({b['origin']}), "
                   f"{_left(b['left'])} left")
    if answer["protected_by"]:
        out.append("  never banned: protected by "
                   + "; ".join(printable(p) for p in answer["protected_by"]))
    for name, jail in answer["failures_now"].items():
        out.append(f"  jail {name}: {jail['failures']} of maxretry {jail['maxretry']} failures "
                   f"within findtime {jail['findtime']:g}s")
    if "store" in answer:
        out.append(f"  store: {answer['store']}")
        return "\n".join(out)
    for ban in answer["bans"]:
        lifted = f", lifted by {ban['lifted_by']} at {ban['lifted']}" if ban["lifted"] else ""
        step = f", escalation step {ban['escalation_step']}" if ban["escalation_step"] else ""
        out.append(f"\nban #{ban['id']} of {ban['target']}: jail {ban['jail']}, {ban['origin']}, "
                   f"{ban['failures']} failures, {ban['started']} to "
                   f"{ban['ends'] or 'until unbanned'}{lifted}{step}"
                   + (f", note: {printable(ban['note'])}" if ban["note"] else ""))
        for m in ban["messages"]:
            out.append(f"  {m['time']} {m['source']} from {m['sender']} ({m['transport']}): "
                       f"{m['raw']!r}")
    if answer["messages"]:
        out.append(f"\nlatest messages that counted for {address}:")
        out += [f"  {m['time']} {m['source']} from {m['sender']} ({m['transport']}): "
                f"{m['raw']!r}" for m in answer["messages"]]
    return "\n".join(out)


def _done(answer: dict[str, Any]) -> str:
    return " ".join(f"{key}: {', '.join(value) if isinstance(value, list) else value}"
                    for key, value in answer.items() if value not in (None, []))


Call = tuple[str, str, dict[str, str] | None, dict[str, Any] | None, Callable[[Any], str]]


def request_of(args: argparse.Namespace) -> Call:
    """(method, path, query, body, how to show the answer) for a parsed admin command."""
    command = args.command
    if command == "status":
        query = {"jail": args.jail} if args.jail else None
        return "GET", "/v1/status", query, None, _status
    if command == "bans":
        return "GET", "/v1/bans", None, None, _bans
    if command == "allows":
        return "GET", "/v1/allows", None, None, _allows
    if command in ("history", "explain"):
        show = _history if command == "history" else _explain
        return "GET", f"/v1/{command}", {"address": args.address}, None, show
    body: dict[str, Any] = {"target": args.target}
    if getattr(args, "jail", None):
        body["jail"] = args.jail
    if getattr(args, "duration", None):
        body["for"] = args.duration
    if getattr(args, "note", None):
        body["note"] = args.note
    return "POST", f"/v1/{command}", None, body, _done


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The admin's subcommands, each with --json and --socket (from `common`)."""
    p = commands.add_parser("status", parents=[common],
                            help="per jail: fail2ban's counters and the banned list")
    p.add_argument("jail", nargs="?")
    commands.add_parser("bans", parents=[common], help="every running ban, with time left")
    commands.add_parser("allows", parents=[common], help="the allow entries")
    p = commands.add_parser("ban", parents=[common], help="ban an address or network now")
    p.add_argument("target", help="an address or a network (CIDR)")
    p.add_argument("--jail", help="file it under this jail (its ports and bantime); default: "
                                  "the manual sets, every port, until unbanned")
    p.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 2h, 30d")
    p.add_argument("--note")
    p = commands.add_parser("unban", parents=[common],
                            help="end every ban of it now (banned again after maxretry more "
                                 "failures)")
    p.add_argument("target")
    p = commands.add_parser("allow", parents=[common],
                            help="unban it and never ban it while the entry lasts")
    p.add_argument("target")
    p.add_argument("--for", dest="duration", metavar="DURATION")
    p.add_argument("--note")
    p = commands.add_parser("disallow", parents=[common], help="remove an allow entry")
    p.add_argument("target")
    p = commands.add_parser("history", parents=[common], help="an address's bans, newest first")
    p.add_argument("address")
    p = commands.add_parser("explain", parents=[common],
                            help="why an address is banned (the exact lines), or why not")
    p.add_argument("address")


ADMIN_COMMANDS = ("status", "bans", "allows", "ban", "unban", "allow", "disallow", "history",
                  "explain")


def run(args: argparse.Namespace, socket: str) -> str:
    """Send the command; return what to print. Raises ControlUnreachable or Refused."""
    method, path, query, body, show = request_of(args)
    answer = asyncio.run(_request(socket, method, path, params=query, body=body))
    return json.dumps(answer, indent=2) if args.json else show(answer)
