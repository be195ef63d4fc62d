"""--quiet hides progress bars and progress messages; the result line still prints."""

from cli.main import main


def test_quiet_hides_the_progress_bar(tiny_model_dir, tmp_path, capsys):
    common = ["acts", "cache", "--model", str(tiny_model_dir), "--tokens", "300", "--seq-batch", "16"]
    assert main([*common, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "caching blocks.1.hook_resid_post" in loud.err  # the tqdm bar
    assert main([*common, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith("cached 300 activations")

