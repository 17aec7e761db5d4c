import pytest

from lab import make_lab


@pytest.fixture
def lab(tmp_path):
    with make_lab(tmp_path) as made:
        yield made
