import pytest
import torch

from workbench import toyworld
from workbench.errors import ModelError
from workbench.models import build_tokenizer, check_hook, encode, hook_dim, load_model, load_tokenizer


def test_tokenizer_round_trip_offline(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    text = "When Mary and John went to the store , John gave a drink to"
    assert again.encode(text) == tok.encode(text)
    assert len(tok.encode(text, add_special_tokens=False)) == len(text.split())
    assert len(tok.get_vocab()) == len(toyworld.vocabulary())


def test_every_name_is_one_token_and_pools_disjoint(tiny_model):
    for name in toyworld.NAMES:
        assert len(tiny_model.to_tokens(name, prepend_bos=False)[0]) == 1
    assert not set(toyworld.IOI_NAMES) & set(toyworld.HELDOUT_NAMES)


def test_to_tokens_and_str_tokens(tiny_model):
    toks = tiny_model.to_tokens("Mary saw John")
    assert toks.shape == (1, 4) and toks[0, 0] == tiny_model.tokenizer.bos_token_id
    assert tiny_model.to_str_tokens("Mary saw John") == ["<bos>", "Mary", "saw", "John"]


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ModelError, match="did you mean.*gpt2"):
        load_model("gpt-2x")
    with pytest.raises(ModelError, match="unknown model 'zzzzzz'"):
        load_model("zzzzzz")


def test_unknown_hook_lists_close_matches(tiny_model):
    with pytest.raises(ModelError, match="blocks.1.hook_resid_post"):
        check_hook(tiny_model, "blocks.1.hook_resid_pots")
    assert hook_dim(tiny_model, "blocks.0.attn.hook_z") == 32
    assert hook_dim(tiny_model, "blocks.0.attn.hook_z", head=1) == 16
    assert hook_dim(tiny_model, "blocks.1.mlp.hook_post") == 128


def test_out_of_vocabulary_words_are_named(tiny_model):
    with pytest.raises(ModelError, match="Zebedee"):
        encode(tiny_model, ["When Zebedee and John went to the store"])


def test_saved_model_reloads_identically(tiny_model_dir, tiny_model):
    again = load_model(str(tiny_model_dir))
    toks = tiny_model.to_tokens("Mary saw John at the park")
    assert torch.equal(again(toks), tiny_model(toks))


def test_corrupt_weights_are_a_clear_error(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(str(bad))
    (bad / "config.json").write_text("{")
    with pytest.raises(ModelError, match="config.json"):
        load_model(str(bad))


def test_pretrained_name_goes_through_transformer_lens(fake_gpt2):
    """load_model('gpt2') uses HookedTransformer.from_pretrained (here on a tiny local GPT-2)."""
    assert fake_gpt2.cfg.n_layers == 2 and fake_gpt2.cfg.d_model == 32
    assert fake_gpt2.cfg.model_name == "gpt2"
    toks = fake_gpt2.to_tokens("When Mary and John went to the store")
    assert toks[0, 0] == fake_gpt2.tokenizer.bos_token_id
    assert len(fake_gpt2.tokenizer.encode(" Mary", add_special_tokens=False)) == 1
    logits = fake_gpt2(toks)
    assert logits.shape == (1, toks.shape[1], fake_gpt2.cfg.d_vocab)


def test_gpt2_small_shaped_is_gpt2_small_sized_and_seeded():
    """The stand-in for GPT-2 small in speed checks: its shape, the toy tokenizer, the same weights for the same seed."""
    from workbench.models import gpt2_small_shaped

    a, b = gpt2_small_shaped("cpu", seed=1), gpt2_small_shaped("cpu", seed=1)
    assert (a.cfg.n_layers, a.cfg.d_model, a.cfg.n_heads, a.cfg.d_mlp) == (12, 768, 12, 3072)
    assert a.cfg.d_vocab == len(a.tokenizer)
    assert torch.equal(a.W_E, b.W_E) and not torch.equal(a.W_E, gpt2_small_shaped("cpu", seed=2).W_E)
