"""cli.acts.ensure_cache: the benches' "cache once, reuse after" step."""

from cli.acts import ensure_cache
from workbench.cache import ActivationCache


def test_ensure_cache_builds_once_and_then_reuses(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cache"
    assert ensure_cache(out, str(tiny_model_dir), "blocks.0.hook_resid_post", 64) == 0
    first = (out / "manifest.json").stat().st_mtime_ns
    assert len(ActivationCache(out)) == 64
    assert ensure_cache(out, str(tiny_model_dir), "blocks.0.hook_resid_post", 999) == 0  # there: not rebuilt
    assert (out / "manifest.json").stat().st_mtime_ns == first and len(ActivationCache(out)) == 64


def test_ensure_cache_returns_the_commands_exit_code(tmp_path, tiny_model_dir):
    assert ensure_cache(tmp_path / "c", str(tiny_model_dir), "blocks.0.hook_no_such_hook", 64) == 2
    assert not (tmp_path / "c" / "manifest.json").exists()
