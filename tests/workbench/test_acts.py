import pytest
import torch

from workbench.acts import ActivationStream, ActsConfig, select_positions
from workbench.cache import ActivationCache, CacheWriter
from workbench.acts import cache_activations
from workbench.errors import CacheError, ConfigError, ModelError


def small_cfg(**kw):
    return ActsConfig(**{"batch_size": 64, "seq_batch": 16, "shuffle_buffer": 256, **kw})


def test_stream_matches_run_with_cache(tiny_model):
    cfg = small_cfg(hook="blocks.0.hook_resid_post", shuffle_buffer=0, batch_size=10**6)
    stream = ActivationStream(tiny_model, cfg)
    ref_stream = ActivationStream(tiny_model, cfg)
    texts = ref_stream.text.next(cfg.seq_batch)
    toks = tiny_model.to_tokens(texts, padding_side="right")
    _, cache = tiny_model.run_with_cache(toks)
    mask = select_positions(toks, tiny_model.tokenizer.pad_token_id, "all")
    got = stream.forward_chunk()
    assert torch.allclose(got, cache["blocks.0.hook_resid_post"][mask], atol=1e-5)


def test_stream_batches_and_exact_resume(tiny_model):
    cfg = small_cfg(hook="blocks.1.hook_resid_post")
    a = ActivationStream(tiny_model, cfg)
    first = [next(a) for _ in range(3)]
    assert all(b.shape == (64, 32) for b in first)
    state = a.state_dict()
    cont = [next(a) for _ in range(3)]
    b = ActivationStream(tiny_model, cfg)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(cont, [next(b) for _ in range(3)]))


def test_per_head_hook_and_positions(tiny_model):
    """A per-head hook yields that head's slice at the selected positions, exactly as run_with_cache has it."""
    cfg = small_cfg(hook="blocks.0.attn.hook_z", head=1, shuffle_buffer=0, positions="end")
    stream, ref_stream = ActivationStream(tiny_model, cfg), ActivationStream(tiny_model, cfg)
    toks = tiny_model.to_tokens(ref_stream.text.next(cfg.seq_batch), padding_side="right")
    _, cache = tiny_model.run_with_cache(toks)
    mask = select_positions(toks, tiny_model.tokenizer.pad_token_id, "end")  # (batch, pos), one per row
    want = cache["blocks.0.attn.hook_z"][:, :, 1][mask]  # (batch, d_head): head 1 at each sequence's end
    got = stream.forward_chunk()
    assert got.shape == (cfg.seq_batch, 16) and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, cache["blocks.0.attn.hook_z"][:, :, 0][mask], atol=1e-3)  # not head 0
    toks = torch.tensor([[0, 5, 6, 7, 2, 2], [0, 5, 6, 7, 8, 9]])
    assert select_positions(toks, 2, "end").nonzero().tolist() == [[0, 3], [1, 5]]
    assert select_positions(toks, 2, "1,-1").nonzero().tolist() == [[0, 1], [0, 3], [1, 1], [1, 5]]
    assert select_positions(toks, 2, "all").sum() == 3 + 5


def test_unknown_hook_fails_before_streaming(tiny_model):
    with pytest.raises(ModelError, match="close matches"):
        ActivationStream(tiny_model, small_cfg(hook="blocks.0.hook_resid_mid_typo"))


def test_text_file_corpus(tiny_model, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("Mary saw John at the park .\nJohn gave a book to Mary\n")
    x = next(ActivationStream(tiny_model, small_cfg(corpus=str(f), batch_size=16, shuffle_buffer=0)))
    assert x.shape == (16, 32)


def test_cache_round_trip_and_manifest(tiny_model, tmp_path):
    cfg = small_cfg(hook="blocks.1.hook_resid_post", shuffle_buffer=0)
    path, stats = cache_activations(cfg, 500, tmp_path / "c", model=tiny_model, progress=False)
    cache = ActivationCache(path)
    assert len(cache) == 500 and cache.manifest["hook"] == "blocks.1.hook_resid_post"
    # the cache holds exactly what the stream produces, in order
    s = ActivationStream(tiny_model, cfg)
    ref = torch.cat([s.forward_chunk() for _ in range(10)])[:500]
    assert torch.allclose(cache[0:500], ref)
    batch = next(cache.batches(100, seed=0))
    assert batch.shape == (100, 32)


def test_cache_errors_name_the_file(tmp_path):
    w = CacheWriter(tmp_path / "c", 4, {}, shard_rows=10)
    w.write(torch.randn(25, 4))
    with pytest.raises(CacheError, match="never finished"):
        ActivationCache(tmp_path / "c")  # no manifest until close()
    w.close()
    ActivationCache(tmp_path / "c")
    shard = tmp_path / "c" / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(CacheError, match="shard-00001.arrow is truncated"):
        ActivationCache(tmp_path / "c")
    shard.unlink()
    with pytest.raises(CacheError, match="shard-00001.arrow is missing"):
        ActivationCache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{oops")
    with pytest.raises(CacheError, match="manifest.json is corrupt"):
        ActivationCache(tmp_path / "c")


def test_cache_writer_rejects_wrong_width(tmp_path):
    with pytest.raises(CacheError, match=r"\(n, 4\)"):
        CacheWriter(tmp_path / "c", 4, {}).write(torch.randn(3, 5))


def test_cache_batches_are_the_rows_of_their_shuffled_order(tmp_path):
    """Batches read scattered blocks window by window; each row must be the one its index names."""
    from workbench.cache import ActivationCache, CacheWriter

    x = torch.arange(50_000 * 4, dtype=torch.float32).reshape(50_000, 4)  # row i holds 4i .. 4i+3
    w = CacheWriter(tmp_path / "c", d=4, meta={"model": "m", "hook": "h"}, shard_rows=7_000)
    w.write(x)
    w.close()
    cache = ActivationCache(tmp_path / "c")
    order = cache._epoch_order(50_000, 1024, True, torch.Generator().manual_seed(0 * 100_003))
    it = cache.batches(3000, shuffle=True, seed=0, block=1024)
    for b in range(5):
        got = next(it)
        assert torch.equal(got, x[order[b * 3000:(b + 1) * 3000]])


# ---- the reliability sweep (issue 17) -----------------------------------------------------------
@pytest.mark.parametrize("positions", ["500", "-500", "64,65"])
def test_positions_outside_the_context_fail_before_streaming(tiny_model, positions):
    with pytest.raises(ConfigError, match=f"positions: '{positions}' selects no token: the model's context is"):
        ActivationStream(tiny_model, small_cfg(positions=positions))


def test_position_zero_is_rejected_by_the_config():
    with pytest.raises(ConfigError, match="position 0 is BOS"):
        small_cfg(positions="0")
    small_cfg(positions="0,1")  # 1 can select


def test_positions_past_every_sequence_end_stop_instead_of_hanging(tiny_model):
    """An index inside the context but past every (short) toy sentence selects nothing, forward after forward."""
    stream = ActivationStream(tiny_model, small_cfg(positions=str(tiny_model.cfg.n_ctx - 1), shuffle_buffer=0))
    with pytest.raises(ConfigError, match=r"selected no token in \d+ sequences of at most \d+ tokens"):
        next(stream)


def _cache(tmp_path, x, **kw):
    w = CacheWriter(tmp_path / "c", x.shape[1], {}, **kw)
    w.write(x)
    return w.close()


def test_manifest_holds_checksums_and_verify_catches_changed_values(tmp_path):
    import hashlib
    import json

    import numpy as np

    x = torch.randn(30, 4)
    path = _cache(tmp_path, x, shard_rows=10)
    shards = json.loads((path / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in shards] == [hashlib.sha256((path / s["file"]).read_bytes()).hexdigest() for s in shards]
    assert [s["max_abs"] for s in shards] == pytest.approx([float(x[i:i + 10].abs().max()) for i in (0, 10, 20)])
    ActivationCache(path).verify()
    # the same bytes' length, one value changed to a huge one: sizes and rows still match
    f = path / "shard-00001.arrow"
    raw = bytearray(f.read_bytes())
    i = raw.find(np.float32(x[10, 0]).tobytes())
    raw[i:i + 4] = np.float32(3e38).tobytes()
    f.write_bytes(bytes(raw))
    cache = ActivationCache(path)
    with pytest.raises(CacheError, match="shard-00001.arrow was modified after it was written"):
        cache.verify()


@pytest.mark.parametrize("value, what", [(float("nan"), "non-finite"), (float("inf"), "non-finite"), (1e30, "above 1e\\+18")])
def test_verify_catches_non_finite_and_huge_values_without_checksums(tmp_path, value, what):
    """A cache written without checksums (or by other code) still fails `acts info` on bad values."""
    import json

    import pyarrow as pa

    x = torch.randn(20, 4)
    path = _cache(tmp_path, x)
    x[7, 2] = value
    flat = pa.array(x.numpy().reshape(-1))
    table = pa.Table.from_arrays([pa.FixedSizeListArray.from_arrays(flat, 4)], names=["acts"])
    with pa.OSFile(str(path / "shard-00000.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    m = json.loads((path / "manifest.json").read_text())
    for s in m["shards"]:
        s.pop("sha256")
        s["bytes"] = (path / s["file"]).stat().st_size
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=f"shard-00000.arrow holds .*{what}"):
        ActivationCache(path).verify()


def test_writer_refuses_non_finite_activations(tmp_path):
    w = CacheWriter(tmp_path / "c", 4, {})
    with pytest.raises(CacheError, match="1 non-finite activation values"):
        w.write(torch.tensor([[0.0, 1.0, float("nan"), 2.0]]))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("d"), "has no 'd'"),
    (lambda m: m.update(d="32"), "'d' must be a positive integer, got '32'"),
    (lambda m: m.update(d=None), "'d' must be a positive integer, got None"),
    (lambda m: m.update(d=8), "holds rows of width 4, but .* says d=8"),
    (lambda m: m.update(shards={"file": "x"}), "'shards' must be a list"),
    (lambda m: m["shards"][0].pop("rows"), "shard entry 0 must be"),
    (lambda m: m.update(shards=[]), "holds no activations"),
])
def test_a_bad_manifest_is_one_error_naming_the_field(tmp_path, edit, match):
    import json

    path = _cache(tmp_path, torch.randn(20, 4))
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=match):
        ActivationCache(path)


def test_an_empty_cache_cannot_be_made_or_read(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="tokens: must be positive"):
        cache_activations(small_cfg(), 0, tmp_path / "c", model=tiny_model, progress=False)
    CacheWriter(tmp_path / "e", 4, {}).close()  # a writer closed with no rows (other code)
    with pytest.raises(CacheError, match="holds no activations"):
        ActivationCache(tmp_path / "e")
    (tmp_path / "non-utf8").mkdir()
    (tmp_path / "non-utf8" / "manifest.json").write_bytes(b"\xff{}")
    with pytest.raises(CacheError, match="is corrupt"):
        ActivationCache(tmp_path / "non-utf8")


def test_acts_info_checks_checksums(tmp_path, capsys):
    from cli.main import main

    path = _cache(tmp_path, torch.randn(20, 4))
    assert main(["acts", "info", str(path)]) == 0
    assert "1 shard(s), 20 rows, all present and intact" in capsys.readouterr().out
    f = path / "shard-00000.arrow"
    raw = bytearray(f.read_bytes())
    raw[-40] ^= 0xFF  # inside the data, same size
    f.write_bytes(bytes(raw))
    assert main(["acts", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"workbench acts: error: cache shard {f} was modified after it was written (its sha256 differs from {path / 'manifest.json'}); re-run `workbench acts cache`\n"
