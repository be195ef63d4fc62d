"""workbench.devices.check_device: a device torch cannot use here is one ConfigError naming the fix."""

import pytest
import torch

from workbench.devices import check_device
from workbench.errors import ConfigError


def test_cpu_and_the_default_pass():
    assert check_device("cpu") == "cpu" and check_device(None) == "cpu"


def test_a_string_that_is_not_a_device():
    with pytest.raises(ConfigError, match=r"device: 'gpu0' is not a torch device .*pass e.g. --device cpu"):
        check_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ConfigError, match=f"device: '{device}' asks for a GPU, but .*; pass --device cpu"):
        check_device(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_index_past_the_last():
    n = torch.cuda.device_count()
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match=f"this machine has {n} GPU"):
        check_device(f"cuda:{n}")
