"""A tiny randomly initialised GPT-2 laid out in a local Hugging Face cache under the name "gpt2".

With HF_HOME pointing there and HF_HUB_OFFLINE=1, ``HookedTransformer.from_pretrained("gpt2")`` runs
its real loading path (config conversion, weight conversion, tokenizer) without the network. The
tokenizer is a byte-level BPE trained on toy-world text, so names are single tokens with a leading
space, as in GPT-2.
"""

from __future__ import annotations

import random
from pathlib import Path

COMMIT = "0" * 40


def build_fake_gpt2_home(root: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from workbench import toyworld

    snap = root / "hub" / "models--gpt2" / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (root / "hub" / "models--gpt2" / "refs").mkdir(parents=True, exist_ok=True)
    (root / "hub" / "models--gpt2" / "refs" / "main").write_text(COMMIT)

    rng = random.Random(seed)
    corpus = [toyworld.training_text(rng) for _ in range(3000)]
    corpus += [f"{toyworld.make_ioi_prompt(rng, toyworld.NAMES, 'any').text} {n}" for n in toyworld.NAMES]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=700, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(str(snap))

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_ctx=64,  # n_ctx: as in the real config.json
                     n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(snap))
    return root
