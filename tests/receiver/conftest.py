from collections.abc import Callable, Iterator

import pytest

from bansink.receiver.tcp import StreamListener

from streams import Served


@pytest.fixture
def serve(request) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(listener: StreamListener) -> Served:
        served = Served(request.param, listener)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
