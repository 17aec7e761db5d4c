"""RELP resends: telling librelp's resends after a broken session from genuine repeats."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable


class _Probe:
    __slots__ = ("checked", "sender")

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.checked = 0


class ResendGuard:
    """Tells librelp's resends from genuine repeats, per RELP session.

    When a connection breaks, librelp resends every frame it holds unacknowledged (at most its
    window) as the first frames of its next session, in their order, with new TXNRs. Of those,
    the ones this side had already taken (acknowledged but the ack lost, or still being
    written) are resends; the rest are new. So a frame is a resend only when:
    - its session is the sender's next one after a session of that sender broke (ended
      without a clean `close`), or after a restart (every session broke);
    - it is among that session's first `window` frames, before its first counted frame that is
      not a resend;
    - its digest (sender and bytes) is one of the last `window` frames the broken session
      took, each matching at most once, within `horizon` seconds of the break.
    Identical messages within one healthy session (a user typing the same wrong password twice
    in a second) always count. The one ambiguity left is inherent: right after a break, a new
    message byte-identical to one the broken session took last is taken for its resend.
    """

    def __init__(self, window: int, horizon: float) -> None:
        self.window, self.horizon = window, horizon
        self._tails: dict[int, deque[bytes]] = {}
        """session -> digests of the last `window` frames it took"""
        self._candidates: dict[str, tuple[Counter[bytes], float]] = {}
        """sender -> (digests that its next sessions may resend, until when)"""
        self._probing: dict[int, _Probe] = {}
        """session -> its probe, while its first frames may be resends"""

    def session_started(self, session: int, sender: str, now: float) -> None:
        self._tails[session] = deque(maxlen=self.window)
        found = self._candidates.get(sender)
        if found is not None:
            if found[1] < now:
                del self._candidates[sender]
            else:
                self._probing[session] = _Probe(sender)

    def is_resend(self, session: int, digest: bytes) -> bool:
        """True if this frame resends one already taken: answer it, count nothing."""
        probe = self._probing.get(session)
        if probe is None:
            return False
        found = self._candidates.get(probe.sender)
        if found is None or probe.checked >= self.window:
            del self._probing[session]
            return False
        probe.checked += 1
        digests = found[0]
        if digests[digest] <= 0:
            return False
        digests[digest] -= 1
        if digests[digest] == 0:
            del digests[digest]
            if not digests:
                del self._candidates[probe.sender]
        return True

    def took(self, session: int, digest: bytes, counted: bool) -> None:
        """The session took this frame (it is acknowledged once kept). The first counted frame
        that is not a resend ends the resends; frames that count toward nothing do not (they
        leave no journal row, so after a restart they are not among the candidates)."""
        tail = self._tails.get(session)
        if tail is not None:
            tail.append(digest)
        if counted:
            self._probing.pop(session, None)

    def forget(self, session: int, sender: str, digest: bytes) -> None:
        """The frame was not kept after all (a failed write): its resend must count, also when
        its session already broke and its digest waits among the candidates."""
        tail = self._tails.get(session)
        if tail is not None and digest in tail:
            tail.remove(digest)
            return
        found = self._candidates.get(sender)
        if found is not None and found[0][digest] > 0:
            found[0][digest] -= 1

    def session_ended(self, session: int, sender: str, clean: bool, now: float) -> None:
        tail = self._tails.pop(session, None)
        self._probing.pop(session, None)
        if not clean and tail:
            self.restore(sender, tail, now + self.horizon)

    def restore(self, sender: str, digests: Iterable[bytes], until: float) -> None:
        """Digests that the sender's next sessions may resend (after a break, or from the
        journal after a restart)."""
        found = self._candidates.get(sender)
        counter = found[0] if found is not None else Counter()
        counter.update(digests)
        if counter:
            self._candidates[sender] = (counter, until)

    def expire(self, now: float) -> None:
        for sender in [s for s, (_, until) in self._candidates.items() if until < now]:
            del self._candidates[sender]

    @property
    def remembered(self) -> int:
        return sum(map(len, self._tails.values())) + sum(
            c.total() for c, _ in self._candidates.values())
