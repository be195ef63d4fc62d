"""The one check of a torch device string: it parses and exists on this machine, else a one-line ConfigError."""

from __future__ import annotations

from workbench.errors import ConfigError


def check_device(device: str | None) -> str:
    """device (default 'cpu') if torch can use it here; ConfigError naming the fix otherwise."""
    import torch

    device = device or "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device: {device!r} is not a torch device ({e}); pass e.g. --device cpu or --device cuda") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"device: {device!r} asks for a GPU, but {build}; pass --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device: {device!r} does not exist, this machine has {n} GPU(s); pass --device cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device: {device!r} (Apple GPU) is not available here; pass --device cpu")
    return device
