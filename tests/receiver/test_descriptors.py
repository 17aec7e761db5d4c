"""The stream caps must fit under RLIMIT_NOFILE (raising the soft limit where the hard allows)."""

import resource

import pytest

from bansink.receiver import descriptors
from bansink.receiver.descriptors import (
    MARGIN,
    descriptor_budget,
    descriptors_in_use,
    descriptors_needed,
)
from bansink.receiver.tcp import TcpListener
from bansink.receiver.udp import UdpListener


def stream() -> TcpListener:
    return TcpListener("127.0.0.1", 0, admit=lambda a: a, intake=None, max_message_size=64,
                       max_connections=1, max_connections_per_sender=1, idle_timeout=1)


LISTENERS = [stream(), stream(), stream(),
             UdpListener("127.0.0.1", 0, admit=lambda a: a, intake=None, max_message_size=64,
                          receive_buffer=65536)]


@pytest.fixture
def limits(monkeypatch):
    """A fake RLIMIT_NOFILE: [soft, hard], and the calls that set it."""
    current, set_to = [1024, 4096], []
    monkeypatch.setattr(descriptors.resource, "getrlimit", lambda which: tuple(current))
    monkeypatch.setattr(descriptors.resource, "setrlimit",
                        lambda which, value: (set_to.append(value), current.__init__(value)))
    return current, set_to


def test_needed_is_every_stream_listener_full_plus_the_listeners_and_a_margin():
    assert descriptors_needed(LISTENERS, 1000) == 3 * 1000 + 4 + MARGIN


def test_caps_under_the_soft_limit_need_nothing(limits):
    assert descriptor_budget(LISTENERS, 300) is None
    assert limits[1] == []


def test_the_soft_limit_is_raised_to_the_hard_one_when_that_is_enough(limits):
    assert descriptor_budget(LISTENERS, 1000) is None
    assert limits[1] == [(4096, 4096)]


def test_caps_over_the_hard_limit_are_an_error_naming_the_key(limits):
    error = descriptor_budget(LISTENERS, 2000)
    assert error is not None and error.startswith("receiver.max_connections: 2000 ")
    assert "6068" in error and "4096" in error and limits[1] == []


def test_the_real_limit_is_read():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_budget([stream()], max(1, soft - MARGIN - 1)) is None


def test_descriptors_in_use_counts_what_this_process_opens():
    before, limit = descriptors_in_use()
    with open(__file__), open(__file__):
        assert descriptors_in_use()[0] == before + 2
    assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
