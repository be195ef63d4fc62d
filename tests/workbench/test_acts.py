import pytest
import torch

from workbench.acts import ActivationStream, ActsConfig, select_positions
from workbench.cache import ActivationCache, CacheWriter
from workbench.acts import cache_activations
from workbench.errors import CacheError, ModelError


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
    z = next(ActivationStream(tiny_model, small_cfg(hook="blocks.0.attn.hook_z", head=1)))
    assert z.shape == (64, 16)
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
