"""Sources: each turns the syslog messages of one application into security events.

A source is a plain function (`SyslogMessage -> SecurityEvent | NotMatched | MalformedEvent`),
pure and cheap on messages that are not its own (most traffic). `registry` names them; a jail
names the sources that feed it (engine.pipeline.JailSpec). A dict, not a plugin system: adding
an application is a module here and a line below.
"""

from __future__ import annotations

from collections.abc import Callable

from bansink.receiver.syslog import SyslogMessage

from ..events import MalformedEvent, NotMatched, SecurityEvent
from .roundcube import roundcube_event

Source = Callable[[SyslogMessage], SecurityEvent | NotMatched | MalformedEvent]

registry: dict[str, Source] = {
    "roundcube-security_log": roundcube_event,
}
