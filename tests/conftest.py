"""Shared fixtures: a tiny randomly initialised toy-world model saved like a real one, and the shipped model."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

import workbench.threads  # noqa: F401 - OMP_WAIT_POLICY=PASSIVE before any test imports torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tests never touch the network; a private HF cache (read at import time by huggingface_hub)
# receives the fake "gpt2" built by the fake_gpt2 fixture.
_HF_HOME = tempfile.mkdtemp(prefix="workbench-hf-")
os.environ.update(HF_HOME=_HF_HOME, HF_HUB_CACHE=os.path.join(_HF_HOME, "hub"), HF_HUB_OFFLINE="1",
                  TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="session")
def bench_script():
    """Load a script of bench/ (not a package) as a module: ``bench_script("ioi_settings")``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer d_model=32 toy-world model saved by workbench.models.save_model (random weights)."""
    import torch

    from workbench.models import build_tokenizer, make_model, save_model, toy_config_dict

    root = tmp_path_factory.mktemp("tiny_model")
    build_tokenizer(root / "tok")
    torch.manual_seed(0)
    cfg = toy_config_dict(n_layers=2, d_model=32, n_heads=2, seed=0)
    model = make_model(cfg, root / "tok")
    save_model(model, cfg, root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from workbench.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def toy_model():
    """The shipped embedded model (toy-ioi)."""
    from workbench.models import load_model

    return load_model("toy-ioi")


@pytest.fixture(scope="session")
def fake_gpt2():
    """HookedTransformer.from_pretrained('gpt2') through the real path, on a tiny random local GPT-2."""
    from pathlib import Path

    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_hub", Path(__file__).with_name("fake_hub.py"))
    fake_hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_hub)
    from workbench.models import load_model

    fake_hub.build_fake_gpt2_home(Path(_HF_HOME))
    return load_model("gpt2")


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest installs its script as sys.modules['__main__'] and leaves it there; restore
    it so later tests that spawn processes (torch.multiprocessing) re-import the real __main__."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
