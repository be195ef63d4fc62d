"""The IOI grammar: held-out splits by construction, balanced attributes, names where they belong."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from workbench import grammar, toyworld
from workbench.ioi import sample_prompts

NAMES = toyworld.IOI_NAMES[:12]

# How each held-out production shows in a frame's text (checked on the words, not only the bookkeeping).
HELDOUT_TEXT = {
    "coord:and": re.compile(r"\{B\}[^.]* , and \{S\}"),
    "pair:with": re.compile(r"\{A\} was with \{B\}"),
    "transfer:handed-it": re.compile(r"handed it to$"),
    "link:comma-then": re.compile(r", then \{S\}"),
    "subtail:filler": re.compile(r"(^|\. )(When|While|After) [^,]*, (it|the|then) "),
    "filler:obj-at": re.compile(r"(^|\. |, )the \w+ was at the \w+ \."),
}


def _frames(split: str, n: int, seed: int = 0) -> list[grammar.IOIPrompt]:
    rng = random.Random(seed)
    return [grammar.sample_prompt(rng, NAMES, split) for _ in range(n)]


def test_every_heldout_production_has_a_text_check():
    assert set(HELDOUT_TEXT) == set(grammar.HELDOUT_PRODUCTIONS)


def test_training_prompts_never_use_a_heldout_production():
    for p in _frames("train", 3000):
        assert not grammar.HELDOUT_PRODUCTIONS.intersection(p.productions), p.productions
        for prod, pattern in HELDOUT_TEXT.items():
            assert not pattern.search(p.frame), (prod, p.frame)


def test_heldout_production_prompts_each_use_one_and_cover_all():
    seen = Counter()
    for p in _frames("productions", 1500):
        used = grammar.HELDOUT_PRODUCTIONS.intersection(p.productions)
        assert used, p.frame
        for prod in used:
            assert HELDOUT_TEXT[prod].search(p.frame), (prod, p.frame)
            seen[prod] += 1
    assert set(seen) == set(grammar.HELDOUT_PRODUCTIONS)


def test_s2_positions_spread_over_the_split_ranges():
    train = Counter(p.s2_index() for p in _frames("train", 3000))
    assert min(train) <= 6 and max(train) == grammar.TRAIN_MAX_S2
    assert len(train) >= grammar.TRAIN_MAX_S2 - 8  # nearly every position in range occurs
    long = [p.s2_index() for p in _frames("long", 300)]
    assert min(long) >= grammar.LONG_S2[0] and max(long) <= grammar.LONG_S2[1]


@pytest.mark.parametrize("split", grammar.SPLITS)
def test_names_sit_where_the_labels_say(split):
    for p in _frames(split, 300, seed=1):
        words = p.text.split()
        assert words.count(p.io) == 1 and words.count(p.s) == 2, p.text
        i_io, i_s1 = words.index(p.io), words.index(p.s)
        assert (i_io < i_s1) == (p.pos == "ABB"), p.text
        assert 1 + len(words) - 1 - words[::-1].index(p.s) == p.s2_index()  # BOS is index 0
        assert words[-1] in ("to", "saw", "met", "called", "with")
        assert p.family in grammar.FAMILIES


def test_counterfactual_rerender_changes_only_the_names():
    p = _frames("train", 1, seed=5)[0]
    q = p.with_names(io="Zoe", pos="BAB" if p.pos == "ABB" else "ABB")
    assert q.frame == p.frame and q.s == p.s and q.io == "Zoe"
    assert q.text.split().count("Zoe") == 1
    assert p.render(s2="Zoe").split().count(p.s) == 1
    with pytest.raises(ValueError, match="must differ"):
        p.with_names(io=p.s)


def test_sample_prompts_balances_pos_and_is_seeded():
    ps = sample_prompts(200, NAMES, seed=3)
    assert Counter(p.pos for p in ps) == Counter({"ABB": 100, "BAB": 100})
    assert ps == sample_prompts(200, NAMES, seed=3) and ps != sample_prompts(200, NAMES, seed=4)
    assert {p.family for p in ps} == set(grammar.FAMILIES)


def test_every_word_is_in_the_vocabulary():
    vocab = set(toyworld.vocabulary())
    rng = random.Random(0)
    texts = [toyworld.training_text(rng) for _ in range(3000)]
    texts += [p.text for split in grammar.SPLITS for p in _frames(split, 300)]
    words = {w for t in texts for w in t.split()}
    assert words <= vocab, words - vocab
    assert vocab - words <= set(toyworld.SPECIAL)  # and every word is trained


def test_general_text_uses_pronouns_of_the_right_gender():
    assert set(toyworld.GENDER) == set(toyworld.NAMES)
    assert Counter(toyworld.GENDER[n] for n in toyworld.IOI_NAMES) == Counter({"F": 40, "M": 40})
    rng = random.Random(0)
    checked = 0
    for _ in range(2000):
        words = toyworld.general_text(rng, toyworld.NAMES).split()
        if words[1:2] != ["he"] and "he" not in words and "she" not in words:
            continue
        if words[0] in toyworld.NAMES and words.count(".") >= 2 and all(w not in toyworld.NAMES for w in words[1:]):
            pron = {w for w in words if w in ("he", "she")}
            assert pron == {toyworld.PRONOUN[toyworld.GENDER[words[0]]]}, words
            checked += 1
    assert checked > 100


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split 'nope'; choose one of train"):
        grammar.sample_prompt(random.Random(0), NAMES, "nope")
