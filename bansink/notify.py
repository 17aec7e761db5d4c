"""Telling the admin about bans without flooding them (fail2ban #832): the first ban goes out
at once, the bans after it as one digest per window, and a hard cap per hour on top.

- `DigestWindow` decides *what* is sent and when: pure, with `now` as an argument.
- `Notifier` is the asyncio adapter: `on_ban` (called inside the ban's path, by the ban book)
  only updates the window, and a message goes to each channel's bounded queue; each channel
  has its own task that delivers with a timeout. A failing or hanging endpoint costs at most
  its queue and never slows a ban.
- Channels: a webhook (JSON POST, in bansink's own shape or in ntfy's, Gotify's, Slack's or
  Mattermost's) and mail through the local MTA (SMTP to port 25, or `sendmail -t -i`).

A message carries only what bansink itself wrote: addresses it parsed as IP literals, jail names
and origins from the config, counts and the page's link. No text from a log line (user names,
hosts) is ever in one. Bodies are built with a JSON encoder and the email package (which refuses
a line break in a header), never by pasting strings into a format.
"""

from __future__ import annotations

import asyncio
import json
import math
import smtplib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal, NamedTuple, Protocol

import aiohttp
import structlog

from bansink.engine.decisions import Ban

from .config import Config, NotifyConfig
from .logs import Throttle

log = structlog.get_logger("bansink")

HOUR = 3600.0
MAX_TARGETS = 10_000
"""Distinct addresses a digest counts one by one; past that they are only totalled (a storm of
a million bans costs no more memory than this)."""


class NotifyError(Exception):
    """A message could not be delivered; the text says why (for the log)."""


class BanFacts(NamedTuple):
    """What a message says about one ban."""

    target: str
    jail: str
    origin: str
    failures: int
    bantime: float
    """Seconds (math.inf: until lifted)."""


def facts_of(ban: Ban) -> BanFacts:
    return BanFacts(str(ban.target), ban.jail, ban.origin.value, ban.failures, ban.bantime)


@dataclass(frozen=True, slots=True)
class Notice:
    """One message, whatever the channel: a ban sent at once, or a digest."""

    kind: Literal["ban", "digest"]
    at: float
    """Wall clock when it was made."""
    since: float
    """Wall clock: the start of what it covers (the ban itself, or the digest's period)."""
    bans: int
    totals: tuple[tuple[str, str, int], ...]
    """(jail, origin, bans), most first."""
    top: tuple[tuple[str, int], ...]
    """(address or network, bans), most first, at most `notify.top`."""
    suppressed: int = 0
    """Messages the hourly cap held back since the last one sent (their bans are in this one)."""
    ban: BanFacts | None = None
    """The ban, for kind "ban"."""
    link: str = ""
    window: float = 0.0
    """The digest window, seconds (for the wording)."""


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "until lifted"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size < 1:
            return f"{round(seconds / size)}{unit}"
    return f"{round(seconds)}s"


class DigestWindow:
    """The first ban after a quiet window is sent at once and opens a window; bans inside it are
    gathered, and at its end sent as one digest, which opens the next window; a window that
    gathered nothing ends the run (the next ban is sent at once again). On top of that, at most
    `max_per_hour` messages in any hour: what the cap holds back stays gathered and goes out
    with the next digest the cap lets through, which says how many messages were held back."""

    def __init__(self, window: float, max_per_hour: int, top: int, *, link: str = "",
                 max_targets: int = MAX_TARGETS) -> None:
        self.window, self.max_per_hour, self.top = window, max_per_hour, top
        self.link = link
        self.max_targets = max_targets
        self.deadline: float | None = None
        """When the open window ends (monotonic); None: no window open."""
        self._sent: deque[float] = deque()
        self._suppressed = 0
        self.suppressed_total = 0
        """Messages held back by the cap since start."""
        self._reset(0.0)

    def _reset(self, wall: float) -> None:
        self._since = wall
        self._bans = 0
        self._totals: Counter[tuple[str, str]] = Counter()
        self._targets: Counter[str] = Counter()

    def _allowed(self, now: float) -> bool:
        while self._sent and self._sent[0] <= now - HOUR:
            self._sent.popleft()
        if len(self._sent) >= self.max_per_hour:
            self._suppressed += 1
            self.suppressed_total += 1
            return False
        self._sent.append(now)
        return True

    def _gather(self, facts: BanFacts, wall: float) -> None:
        if not self._bans:
            self._since = wall
        self._bans += 1
        self._totals[(facts.jail, facts.origin)] += 1
        if facts.target in self._targets or len(self._targets) < self.max_targets:
            self._targets[facts.target] += 1

    def ban(self, facts: BanFacts, now: float, wall: float) -> Notice | None:
        """A ban was decided: the message to send at once, if any."""
        if self.deadline is not None:
            self._gather(facts, wall)
            return None
        self.deadline = now + self.window
        if not self._allowed(now):
            self._gather(facts, wall)
            return None
        suppressed, self._suppressed = self._suppressed, 0
        return Notice("ban", wall, wall, 1, ((facts.jail, facts.origin, 1),),
                      ((facts.target, 1),), suppressed, facts, self.link, self.window)

    def due(self, now: float, wall: float) -> Notice | None:
        """The digest to send now, if the window has ended and gathered bans."""
        if self.deadline is None or now < self.deadline:
            return None
        if not self._bans:
            self.deadline = None
            return None
        self.deadline = now + self.window
        if not self._allowed(now):
            return None
        totals = tuple((jail, origin, n) for (jail, origin), n in
                       sorted(self._totals.items(), key=lambda item: (-item[1], item[0])))
        top = tuple(sorted(self._targets.items(), key=lambda item: (-item[1], item[0]))
                    [:self.top])
        notice = Notice("digest", wall, self._since, self._bans, totals, top, self._suppressed,
                        None, self.link, self.window)
        self._suppressed = 0
        self._reset(wall)
        return notice


def page_link(config: Config) -> str:
    """The admin page's address for messages: notify.link, else web.url when configured."""
    web = getattr(config, "web", None)
    return config.notify.link or str(getattr(web, "url", "") or "")


# -- what a message says ----------------------------------------------------------------------

def title_of(notice: Notice) -> str:
    if notice.ban is not None:
        return f"{notice.ban.target} banned by {notice.ban.jail}"
    return f"{notice.bans:,} bans in {_duration(max(notice.at - notice.since, 1.0))}"


def text_of(notice: Notice) -> str:
    """The plain-text body every channel uses (mail as is, the webhooks inside their JSON)."""
    lines: list[str] = []
    ban = notice.ban
    if ban is not None:
        failures = f" after {ban.failures} failures" if ban.failures else ""
        lines.append(f"{ban.target} is banned by jail {ban.jail} ({ban.origin}){failures}, "
                     f"for {_duration(ban.bantime)}.")
        lines.append(f"Further bans within {_duration(notice.window)} are sent as one digest.")
    else:
        lines.append(f"{notice.bans:,} bans since the last message.")
        lines.append("")
        lines.append("Per jail and origin:")
        lines.extend(f"  {jail} ({origin}): {n:,}" for jail, origin, n in notice.totals)
        lines.append("")
        lines.append("Most banned addresses:")
        lines.extend(f"  {target}  {n:,}" for target, n in notice.top)
    if notice.suppressed:
        lines.append("")
        lines.append(f"{notice.suppressed} message(s) were held back by the hourly cap "
                     f"(notify.max_per_hour); their bans are counted here.")
    if notice.link:
        lines.append("")
        lines.append(f"Page: {notice.link}")
    return "\n".join(lines)


def as_json(notice: Notice) -> dict[str, Any]:
    """bansink's own webhook body (format = "json")."""
    ban = notice.ban
    return {
        "event": notice.kind, "title": title_of(notice), "text": text_of(notice),
        "at": notice.at, "since": notice.since, "bans": notice.bans,
        "totals": [{"jail": j, "origin": o, "bans": n} for j, o, n in notice.totals],
        "top": [{"target": t, "bans": n} for t, n in notice.top],
        "suppressed": notice.suppressed, "link": notice.link or None,
        "ban": None if ban is None else {
            "target": ban.target, "jail": ban.jail, "origin": ban.origin,
            "failures": ban.failures,
            "bantime": None if math.isinf(ban.bantime) else ban.bantime},
    }


def _slack_escaped(text: str) -> str:
    """Slack reads &, < and > as markup: escaped as its docs say."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_body(notice: Notice, fmt: str, topic: str = "") -> dict[str, Any]:
    """The JSON body for one webhook format."""
    title, text = title_of(notice), text_of(notice)
    if fmt == "ntfy":
        body: dict[str, Any] = {"topic": topic, "title": f"bansink: {title}", "message": text,
                                "tags": ["no_entry"], "priority": 4 if notice.ban else 3}
        if notice.link:
            body["click"] = notice.link
        return body
    if fmt == "gotify":
        extras: dict[str, Any] = {"client::display": {"contentType": "text/plain"}}
        if notice.link:
            extras["client::notification"] = {"click": {"url": notice.link}}
        return {"title": f"bansink: {title}", "message": text,
                "priority": 6 if notice.ban else 4, "extras": extras}
    if fmt == "slack":
        return {"text": f"*bansink: {_slack_escaped(title)}*\n{_slack_escaped(text)}"}
    if fmt == "mattermost":
        return {"text": f"**bansink: {title}**\n```\n{text}\n```", "username": "bansink"}
    return as_json(notice)


def mail_of(notice: Notice, sender: str, to: Sequence[str], prefix: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = f"{prefix} {title_of(notice)}".strip()
    message["Date"] = formatdate(notice.at, localtime=True)
    message["Message-ID"] = make_msgid("bansink")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to it
    message.set_content(text_of(notice))
    return message


# -- channels ---------------------------------------------------------------------------------

class Sender(Protocol):
    name: str

    async def send(self, notice: Notice) -> None:
        """Deliver or raise (NotifyError, OSError, ...); the channel bounds the time."""

    async def close(self) -> None: ...


class WebhookSender:
    name = "webhook"

    def __init__(self, url: str, fmt: str = "json", topic: str = "",
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        self.url, self.format, self.topic = url, fmt, topic
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def send(self, notice: Notice) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = json.dumps(webhook_body(notice, self.format, self.topic), ensure_ascii=False)
        async with self._session.post(self.url, data=body.encode(), headers=self.headers,
                                      allow_redirects=False) as response:
            if response.status >= 300:
                raise NotifyError(f"HTTP {response.status} {response.reason or ''}".strip())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class MailSender:
    """Mail through the local MTA: SMTP (`smtp`, on its own thread, the socket's timeout
    bounding it) or `sendmail -t -i` (a child process, killed past the timeout)."""

    name = "mail"

    def __init__(self, to: Sequence[str], sender: str, *, transport: str = "smtp",
                 smtp: tuple[str, int] = ("127.0.0.1", 25),
                 sendmail: str = "/usr/sbin/sendmail", prefix: str = "[bansink]",
                 timeout: float = 10.0) -> None:
        self.to, self.sender, self.transport = list(to), sender, transport
        self.smtp, self.sendmail, self.prefix = smtp, sendmail, prefix
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bansink-mail")

    async def send(self, notice: Notice) -> None:
        message = mail_of(notice, self.sender, self.to, self.prefix)
        if self.transport == "sendmail":
            await self._pipe(message)
        else:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._submit,
                                                             message)

    def _submit(self, message: EmailMessage) -> None:
        host, port = self.smtp
        with smtplib.SMTP(host, port, timeout=self.timeout) as smtp:
            smtp.send_message(message, from_addr=self.sender, to_addrs=self.to)

    async def _pipe(self, message: EmailMessage) -> None:
        process = await asyncio.create_subprocess_exec(
            self.sendmail, "-t", "-i", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(process.communicate(message.as_bytes()),
                                            self.timeout)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode:
            said = err.decode("utf-8", "replace").strip().splitlines()[:1]
            raise NotifyError(f"{self.sendmail} exited with {process.returncode}"
                              f"{': ' + repr(said[0]) if said else ''}")

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Channel:
    """A sender with its own bounded queue and task."""

    sender: Sender
    timeout: float
    size: int
    queue: asyncio.Queue[Notice] = field(init=False)
    sent: Counter[str] = field(default_factory=Counter)
    """Messages delivered, per kind (ban, digest)."""
    failed: int = 0
    dropped: int = 0
    """Messages dropped because the queue was full (the endpoint hangs or fails)."""
    throttle: Throttle = field(default_factory=lambda: Throttle(60.0))

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.size)

    @property
    def name(self) -> str:
        return self.sender.name

    def offer(self, notice: Notice, now: float) -> None:
        try:
            self.queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
            held = self.throttle.allow(("notify_dropped",), now)
            if held is not None:
                log.error("notify_dropped", channel=self.name, queued=self.queue.qsize(),
                          suppressed=held, hint="the endpoint is failing or slow")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            notice = await self.queue.get()
            try:
                await asyncio.wait_for(self.sender.send(notice), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                error = "timed out" if isinstance(exc, TimeoutError) else \
                    str(exc) or type(exc).__name__
                held = self.throttle.allow(("notify_failed",), loop.time())
                if held is not None:
                    log.error("notify_failed", channel=self.name, kind=notice.kind,
                              error=error[:300], suppressed=held)
            else:
                self.sent[notice.kind] += 1


class Notifier:
    """The digest window over the channels. `on_ban` is what the ban book calls; `start()` and
    `close()` run and end the tasks. `clock` (monotonic) and `wall` can be injected; after
    moving an injected clock, `poke()` has the window looked at again."""

    def __init__(self, window: DigestWindow, senders: Sequence[Sender], *, timeout: float,
                 queue: int, clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.window = window
        self.channels = [Channel(sender, timeout, queue) for sender in senders]
        self._clock, self._wall = clock, wall
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors = 0

    @classmethod
    def from_config(cls, config: NotifyConfig, link: str = "", **kw: Any) -> Notifier:
        senders: list[Sender] = []
        hook, mail = config.webhook, config.mail
        if hook.url:
            senders.append(WebhookSender(hook.url, hook.format, hook.topic, hook.header_map,
                                         config.timeout))
        if mail.to:
            senders.append(MailSender(mail.to, mail.sender, transport=mail.transport,
                                      smtp=mail.smtp, sendmail=mail.sendmail,
                                      prefix=mail.subject_prefix, timeout=config.timeout))
        return cls(DigestWindow(config.window, config.max_per_hour, config.top,
                                link=config.link or link),
                   senders, timeout=config.timeout, queue=config.queue, **kw)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def on_ban(self, ban: Ban) -> None:
        """Never raises and never waits: it runs in the ban's path."""
        try:
            now = self._now()
            opens = self.window.deadline is None
            notice = self.window.ban(facts_of(ban), now, self._wall())
            if notice is not None:
                self._dispatch(notice, now)
            if opens:  # the timer has a deadline to wait for now
                self._wake.set()
        except Exception as exc:  # a bug here must not cost a ban
            self.errors += 1
            log.error("notify_error", error=repr(exc))

    def _dispatch(self, notice: Notice, now: float) -> None:
        for channel in self.channels:
            channel.offer(notice, now)

    def poke(self) -> None:
        self._wake.set()

    async def _timer(self) -> None:
        while True:
            deadline = self.window.deadline
            wait = None if deadline is None else max(0.0, deadline - self._now())
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass
            self._wake.clear()
            now = self._now()
            notice = self.window.due(now, self._wall())
            if notice is not None:
                self._dispatch(notice, now)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._timer()),
                       *(loop.create_task(channel.run()) for channel in self.channels)]

    async def close(self) -> None:
        """End at once: a message still queued or being sent is dropped (and said so)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        left = {channel.name: channel.queue.qsize() for channel in self.channels
                if channel.queue.qsize()}
        if left:
            log.warning("notify_unsent", queued=left)
        for channel in self.channels:
            await channel.sender.close()

    def counters(self) -> dict[str, object]:
        return {"notify_sent": {c.name: dict(c.sent) for c in self.channels},
                "notify_failed": {c.name: c.failed for c in self.channels},
                "notify_dropped": {c.name: c.dropped for c in self.channels},
                "notify_suppressed": self.window.suppressed_total}
