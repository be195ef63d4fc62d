import argparse
from dataclasses import dataclass, field

import pytest

from workbench.acts import ActsConfig
from workbench.config import ConfigError, add_arguments, from_args, from_dict, load_json, save_json, to_dict
from workbench.toy_train import ModelTrainConfig


def test_json_round_trip(tmp_path):
    cfg = ModelTrainConfig(steps=10, warmup_steps=2, out="x")
    save_json(cfg, tmp_path / "c.json")
    assert load_json(ModelTrainConfig, tmp_path / "c.json") == cfg


def test_unknown_field_is_an_error():
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(ModelTrainConfig, {"stepz": 3})


@pytest.mark.parametrize("kw,field_name", [({"steps": 0}, "steps"), ({"d_model": 130}, "d_model"),
                                            ({"ioi_fraction": 1.5}, "ioi_fraction"), ({"lr": -1.0}, "lr")])
def test_out_of_range_values_name_the_field(kw, field_name):
    with pytest.raises(ConfigError, match=f"^{field_name}:"):
        ModelTrainConfig(**kw)


def test_acts_positions_validated():
    with pytest.raises(ConfigError, match="positions"):
        ActsConfig(positions="last")
    ActsConfig(positions="3,-1")


def test_cli_overrides_map_one_to_one():
    p = argparse.ArgumentParser()
    add_arguments(p, ModelTrainConfig)
    args = p.parse_args(["--steps", "1_000", "--lr", "0.01", "--out", "d"])
    cfg = from_args(ModelTrainConfig, args, base=ModelTrainConfig(batch_size=7))
    assert (cfg.steps, cfg.lr, cfg.out, cfg.batch_size) == (1000, 0.01, "d", 7)
    assert to_dict(cfg)["n_layers"] == ModelTrainConfig().n_layers


@dataclass
class _Nested:
    inner: ActsConfig = field(default_factory=ActsConfig)


def test_nested_configs_round_trip():
    d = to_dict(_Nested(ActsConfig(hook="blocks.0.hook_resid_pre")))
    assert from_dict(_Nested, d).inner.hook == "blocks.0.hook_resid_pre"
