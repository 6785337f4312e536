import os

import pytest
import torch
from hypothesis import HealthCheck, settings

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker: the workers already use the cores
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    torch.set_num_threads(1)

settings.register_profile(
    "structmat",
    deadline=None,
    max_examples=int(os.environ.get("STRUCTMAT_HYPOTHESIS_EXAMPLES", "10")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("structmat")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("STRUCTMAT_SLOW", "") not in ("", "0"):
        return
    marker = pytest.mark.skip(reason="slow check: run with --runslow or STRUCTMAT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(marker)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (tiny problems: extra threads only add synchronisation
    cost on a shared CPU); modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
