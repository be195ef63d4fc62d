import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Routing tests are many tiny ops: one thread avoids thread-pool stalls on a shared 2-core box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
