"""Loading a model prints nothing: no TransformerLens "Moving model to device" on every command."""

import warnings

from workbench.models import load_model


def test_loading_a_model_dir_prints_nothing(tiny_model_dir, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = load_model(str(tiny_model_dir))
    out = capsys.readouterr()
    assert model.cfg.device == "cpu"
    assert "Moving model" not in out.out + out.err and out.out == ""
    assert not [w for w in seen if "device" in str(w.message).lower()]


def test_the_cli_prints_only_results(capsys, tmp_path):
    from cli.main import main

    assert main(["model", "eval", "--n", "20"]) == 0
    out = capsys.readouterr().out
    assert "Moving model" not in out and out.splitlines()[0].startswith("acceptance:")
