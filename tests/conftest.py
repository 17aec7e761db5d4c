import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-iterations", type=int, default=20_000,
                     help="hostile lines per fuzz test (CI: 20,000; a long run: millions)")


@pytest.fixture
def fuzz_iterations(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--fuzz-iterations")
