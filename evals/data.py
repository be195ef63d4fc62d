"""IOI dataset splits for the harness: train / eval / counterfactual, with disjoint name pools.

The paper (Makelov et al. 2024, Sec. 3) describes each prompt by three attributes, the supervised
"features" of the task: ``IO`` (the indirect object's name), ``S`` (the subject's name) and ``Pos``
(``ABB``: IO is the first name, ``BAB``: S is). Splits:

- ``train``: prompts over every usable name, attributes balanced and independent (each name appears
  equally often as IO and as S, half the prompts are ABB in every block, and every ordered pair of
  names once per round: :func:`balanced_prompts`); every F1 is scored here.
- ``fit``: the same design over every usable name, but the m prompts of a block share one frame; the
  supervised dictionaries are fitted here and read the train prompts, which they have not seen. A
  shared frame is the same for every name, so it adds nothing to the differences between a value's
  mean and the others' (with a frame per prompt, which frames a name's prompts drew was the largest
  noise left in a weakly carried attribute's vectors: docs/ioi.md). Scoring F1 on such prompts would
  rest on a few hundred frames, hence the two sets.
- ``eval``: prompts whose names come from pool A (the first half of the usable names); every metric
  is measured here.
- ``counterfactual[attr]``: for each eval prompt, the same prompt (its frame: words, places, objects) with
  only ``attr`` changed: a new IO or a new S drawn from pool B (the second half, disjoint from A, so
  the new name never appears in the source prompt), or Pos flipped. Edits move an eval prompt's
  activation towards its counterfactual.

Names must be single tokens for the model's tokenizer (GPT-2: with a leading space);
:func:`check_names` says which are dropped. Everything is seeded: the same arguments give the same
prompts.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from evals.config import ATTRIBUTES, EXTRA_ATTRIBUTES, PROMPT_ATTRIBUTES  # noqa: F401 - imported from here by the harness and tests
from workbench import toyworld
from workbench.errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.ioi import IOIBatch

POS_VALUES = ("ABB", "BAB")
POSITIONS = ("IO", "S1", "S2", "END")


def genders() -> dict[str, str]:
    """name -> "F" / "M" from ``workbench.toyworld.GENDER`` (empty until the toy world carries genders)."""
    return dict(getattr(toyworld, "GENDER", None) or {})


_FIELDS = {"IO": "io", "S": "s", "Pos": "pos", "Place": "place", "Object": "obj"}  # attributes that are a prompt field


def attribute_value(prompt: toyworld.IOIPrompt, attr: str) -> str | None:
    """The value of attribute ``attr`` (one of :data:`PROMPT_ATTRIBUTES`) of one prompt, as text.

    None when the prompt does not carry it (a gender of a name the gender table does not list).
    """
    field = _FIELDS.get(attr)
    if field is not None:
        return getattr(prompt, field)
    if attr == "Template":
        return str(prompt.template)
    if attr in ("A", "B"):
        first, second = (prompt.io, prompt.s) if prompt.pos == "ABB" else (prompt.s, prompt.io)
        return first if attr == "A" else second
    if attr in ("IO gender", "S gender"):
        return genders().get(prompt.io if attr == "IO gender" else prompt.s)
    raise KeyError(attr)


def check_names(model: "HookedTransformer", names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split names into (kept, dropped): kept ones are one token as an answer for this tokenizer."""
    from workbench.ioi import name_token_id

    kept, dropped = [], []
    for n in names:
        try:
            tid = name_token_id(model, n)
            if tid == model.tokenizer.unk_token_id and n != model.tokenizer.unk_token:
                raise ValueError(f"{n!r} is not in the vocabulary")
            # the name must also be a single token inside a prompt (after a space)
            toks = model.to_tokens(f"When {n} and", prepend_bos=False)[0]
            base = model.to_tokens("When and", prepend_bos=False)[0]
            (kept if len(toks) == len(base) + 1 else dropped).append(n)
        except ValueError:
            dropped.append(n)
    return kept, dropped


def name_first_ok(model: "HookedTransformer", name: str) -> bool:
    """Whether `name` at the very start of a prompt is the same token as after a space (the answer token).

    True for the toy model's word tokenizer; False for GPT-2's BPE ("Mary" vs " Mary")."""
    from workbench.ioi import name_token_id

    toks = model.to_tokens(f"{name} and", prepend_bos=False)[0]
    return len(toks) == 2 and int(toks[0]) == name_token_id(model, name)


def default_names(model: "HookedTransformer") -> list[str]:
    """The toy world's IOI training names for the toy model; all toy-world names otherwise."""
    return list(toyworld.IOI_NAMES if getattr(model.cfg, "model_name", "") == "toy-ioi" else toyworld.NAMES)


def with_attributes(p: toyworld.IOIPrompt, **changes: str) -> toyworld.IOIPrompt:
    """The same prompt (frame, places, objects) with some of io / s / pos replaced."""
    return p.with_names(**changes)


def balanced_prompts(n: int, names: Sequence[str], seed: int, split: str = "train", name_first: bool = True,
                     s2: str = "name", frame_per_block: bool = False) -> list[toyworld.IOIPrompt]:
    """n prompts whose IO, S and Pos are balanced and independent; frames drawn from a grammar split.

    The prompts come in rounds of m - 1 blocks of m = len(names) prompts. A round draws one random
    permutation of the names; in each block IO runs over it and S over it shifted by the block's offset
    (the offsets 1 .. m-1 once each, in random order), so every block has each name once as IO and once
    as S, and a round has every ordered pair (IO, S != IO) exactly once. Pos is ABB for half of each
    block, and within a round for half (+-1) of each name's prompts as IO and as S: ABB where the
    parity of the IO's place in the permutation, whether the offset is below m / 2 and a coin per round
    disagree an even number of times. (With a fresh pair per prompt, which S a name's IO prompts drew
    would add noise to every mean over those prompts; a whole round adds none: docs/ioi.md.)
    Frames come from :func:`workbench.grammar.sample_prompt`. name_first=False redraws frames whose text
    starts with a name (for tokenizers such as GPT-2's, where a name at the start is a different token
    from the same name after a space). s2: how the prompts say S2 (grammar.S2_FORMS: S's name, or
    "the former" / "the latter"). frame_per_block: the m prompts of a block share one frame (its words,
    place and object), so every name meets the same frames as IO and as S (the ``fit`` split).
    """
    names = list(names)
    m = len(names)
    if m < 2:
        raise ConfigError(f"names: need at least 2 usable names, got {m}; use a tokenizer with single-token names")
    rng = random.Random(seed)
    out: list[toyworld.IOIPrompt] = []
    offsets: list[int] = []
    while len(out) < n:
        if not offsets:  # a new round
            perm, offsets, coin = rng.sample(names, m), rng.sample(range(1, m), m - 1), rng.randrange(2)
        shift = offsets.pop()
        shared = _prompt(rng, names, split, name_first, perm[0], perm[shift % m], "ABB") if frame_per_block else None
        for j in range(m):
            if len(out) == n:
                break
            pos = "ABB" if (j + (2 * shift < m) + coin) % 2 == 0 else "BAB"
            io, s = perm[j], perm[(j + shift) % m]
            p = shared.with_names(io, s, pos) if shared else _prompt(rng, names, split, name_first, io, s, pos)
            out.append(p.with_s2_form(s2))
    return out


def _prompt(rng: random.Random, names: Sequence[str], split: str, name_first: bool, io: str, s: str, pos: str
            ) -> toyworld.IOIPrompt:
    """A prompt of the split with these names, its frame redrawn while its text starts with a name and
    name_first is False."""
    while True:
        p = toyworld.make_ioi_prompt(rng, names, split, pos=pos, io=io, s=s)
        if name_first or p.text.split(" ", 1)[0] not in (p.io, p.s):
            return p


def counterfactual(p: toyworld.IOIPrompt, attr: str, rng: random.Random, pool: Sequence[str]) -> toyworld.IOIPrompt:
    """p with only `attr` changed: a new IO / S from `pool` (not in p), or Pos flipped."""
    if attr == "Pos":
        return with_attributes(p, pos="BAB" if p.pos == "ABB" else "ABB")
    choices = [n for n in pool if n not in (p.io, p.s)]
    new = rng.choice(choices)
    return with_attributes(p, **{{"IO": "io", "S": "s"}[attr]: new})


@dataclass
class NamePools:
    """Usable names and their split: train uses all, eval pool A, counterfactual values pool B."""

    kept: list[str]
    dropped: list[str]
    eval: list[str]
    counterfactual: list[str]


@dataclass
class IOISplits:
    pools: NamePools
    eval_split: str  # grammar split of the eval prompts (train prompts use "train")
    train: list[toyworld.IOIPrompt]
    eval: list[toyworld.IOIPrompt]
    counterfactual: dict[str, list[toyworld.IOIPrompt]]  # attribute -> prompts aligned with eval
    fit: list[toyworld.IOIPrompt] | None = None  # the supervised dictionaries' prompts; None: the train prompts

    @property
    def fit_prompts(self) -> list[toyworld.IOIPrompt]:
        """The prompts the supervised dictionaries are fitted on (the train prompts when there is no fit split)."""
        return self.train if self.fit is None else self.fit

    def describe(self) -> dict:
        """Sizes, pools, dropped names and balance statistics (max/min count of each attribute's values)."""
        def balance(prompts):
            out = {}
            for a in ATTRIBUTES:
                c = Counter(attribute_value(p, a) for p in prompts)
                out[a] = {"values": len(c), "min_count": min(c.values()), "max_count": max(c.values())}
            return out

        return {"n_train": len(self.train), "n_eval": len(self.eval), "eval_split": self.eval_split,
                "n_fit": None if self.fit is None else len(self.fit),
                "fit": "train prompts, leave-one-out" if self.fit is None else "own prompts, one frame per block",
                "s2": self.eval[0].s2_form if self.eval else "name",
                "names_kept": len(self.pools.kept), "names_dropped": self.pools.dropped,
                "eval_pool": self.pools.eval, "counterfactual_pool": self.pools.counterfactual,
                "train_balance": balance(self.train), "eval_balance": balance(self.eval),
                **({} if self.fit is None else {"fit_balance": balance(self.fit)})}


def make_splits(model: "HookedTransformer", n_train: int = 2000, n_eval: int = 500, seed: int = 0,
                names: Sequence[str] | None = None, eval_split: str = "train", s2: str = "name",
                n_fit: int | None = 0) -> IOISplits:
    """Train (seed), eval (seed + 1), counterfactual (seed + 2) and fit (seed + 5) prompts; see the module
    docstring. n_fit: prompts of the fit split, rounded up to whole blocks of the usable names (0: no fit
    split, the dictionaries are fitted on the train prompts; None: as many as train prompts)."""
    kept, dropped = check_names(model, names if names is not None else default_names(model))
    if len(kept) < 6:
        raise ConfigError(f"names: only {len(kept)} names are single tokens for this tokenizer (dropped {dropped[:10]}); "
                          "pass names that are single tokens")
    half = len(kept) // 2
    pools = NamePools(kept, dropped, kept[:half], kept[half:])
    first = name_first_ok(model, kept[0])
    train = balanced_prompts(n_train, kept, seed, "train", name_first=first, s2=s2)
    ev = balanced_prompts(n_eval, pools.eval, seed + 1, eval_split, name_first=first, s2=s2)
    rng = random.Random(seed + 2)
    cf = {a: [counterfactual(p, a, rng, pools.counterfactual) for p in ev] for a in ATTRIBUTES}
    n_fit = n_train if n_fit is None else n_fit
    if n_fit < 0:
        raise ConfigError(f"n_fit: must be >= 0, got {n_fit}; pass 0 to fit on the train prompts")
    m = len(kept)
    fit = balanced_prompts(-(-n_fit // m) * m, kept, seed + 5, "train", name_first=first, s2=s2, frame_per_block=True) if n_fit else None
    return IOISplits(pools, eval_split, train, ev, cf, fit)


def semantic_positions(batch: "IOIBatch") -> dict[str, torch.Tensor]:
    """Token index of IO, S1 (first S), S2 (second S, or the ordinal word "former" / "latter" of an ordinal
    prompt) and END in each prompt: name -> (batch,) long.

    Found from the token ids, so it works for any tokenizer with single-token names.
    """
    toks = batch.tokens
    n, t = toks.shape
    ar = torch.arange(t, device=toks.device)
    in_prompt = ar[None, :] <= batch.end[:, None]
    is_io = (toks == batch.io_id[:, None]) & in_prompt
    is_s = (toks == batch.s_id[:, None]) & in_prompt
    is_s2 = (toks == batch.s2_id[:, None]) & in_prompt  # S's name again, or "former" / "latter"
    named = batch.s2_id == batch.s_id
    bad = (is_io.sum(1) != 1) | (is_s.sum(1) != torch.where(named, 2, 1)) | (is_s2.sum(1) < 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"prompt {batch.prompts[i].text!r}: expected IO once, S twice (or once and S2 as "
                         "'the former' / 'the latter') as single tokens")
    first = lambda m: torch.where(m, ar, t).min(1).values  # noqa: E731
    last = lambda m: torch.where(m, ar, -1).max(1).values  # noqa: E731
    return {"IO": first(is_io), "S1": first(is_s), "S2": last(is_s2), "END": batch.end.clone()}


def labels(prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Attribute -> (batch,) long index of each prompt's value in values[attr] (-1 if not listed)."""
    out = {}
    for a, vals in values.items():
        idx = {v: i for i, v in enumerate(vals)}
        out[a] = torch.tensor([idx.get(attribute_value(p, a), -1) for p in prompts], dtype=torch.long)
    return out
