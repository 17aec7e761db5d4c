from ipaddress import ip_address

from bansink.actions.dryrun import DryRunBackend
from bansink.engine.decisions import Ban, Origin

A, B = ip_address("203.0.113.7"), ip_address("2001:db8::7")


def ban(target) -> Ban:
    return Ban(target=target, origin=Origin.JAIL, jail="j", failures=1, bantime=60,
               decided_at=0.0)


def test_a_commit_reports_the_bans_and_deletions_queued_the_later_request_winning():
    backend = DryRunBackend()
    backend.add(ban(A))
    backend.delete(A)
    backend.delete(B)
    backend.add(ban(B))
    result = backend.commit()
    assert result.ok and [b.target for b in result.bans] == [B] and result.deletes == (A,)
    assert backend.commit().bans == ()
