"""The toy world: a word-level language with IOI prompts and general text.

Every word is one token. Names are split into pools so generalisation can be measured:
``IOI_NAMES`` appear in IOI training prompts, ``HELDOUT_NAMES`` only in general text during
training (so their embeddings are trained) and are used to test IOI on unseen names. Every name has
a gender (:data:`GENDER`) that the general corpus makes visible through "he" / "she".

IOI prompts come from the compositional grammar in :mod:`workbench.grammar`; the general corpus here
uses names in other ways too (lists that are repeated, new recipients, pronouns, a repeated name as
the answer), so "the name in context that is not repeated" is not the only rule that pays.
"""

from __future__ import annotations

import random

from workbench import grammar
from workbench.grammar import OBJECTS, PLACES, IOIPrompt  # noqa: F401 - re-exported

NAMES = [
    "Mary", "John", "Alice", "Bob", "Anna", "Tom", "Emma", "James", "Lucy", "Paul",
    "Sarah", "Mark", "Laura", "David", "Kate", "Peter", "Julia", "Sam", "Rose", "Jack",
    "Clara", "Adam", "Nora", "Ben", "Ella", "Dan", "Ruth", "Max", "Ivy", "Leo",
    "Grace", "Ian", "Hannah", "Carl", "Lily", "Eric", "Jane", "Fred", "Amy", "Henry",
    "Zoe", "Oscar", "Mia", "Victor", "Eva", "Hugo", "Iris", "Felix", "Olga", "Simon",
    "Tina", "Wade", "Wendy", "Alan", "Beth", "Colin", "Diana", "Evan", "Fiona", "Gary",
    "Helen", "Igor", "Joan", "Kevin", "Lena", "Mike", "Nina", "Owen", "Paula", "Quinn",
    "Rita", "Steve", "Tara", "Umar", "Vera", "Walt", "Xena", "Yuri", "Zack", "Abby",
    "Boris", "Cora", "Dean", "Edith", "Frank", "Gina", "Hank", "Ilse", "Jonas", "Kim",
    "Liam", "Maya", "Neil", "Opal", "Pete", "Rosa", "Seth", "Tess", "Uma", "Vince",
]
IOI_NAMES = NAMES[:80]
HELDOUT_NAMES = NAMES[80:]
_MALE = {
    "John", "Bob", "Tom", "James", "Paul", "Mark", "David", "Peter", "Sam", "Jack", "Adam", "Ben", "Dan",
    "Max", "Leo", "Ian", "Carl", "Eric", "Fred", "Henry", "Oscar", "Victor", "Hugo", "Felix", "Simon",
    "Wade", "Alan", "Colin", "Evan", "Gary", "Igor", "Kevin", "Mike", "Owen", "Quinn", "Steve", "Umar",
    "Walt", "Yuri", "Zack", "Boris", "Dean", "Frank", "Hank", "Jonas", "Liam", "Neil", "Pete", "Seth", "Vince",
}
GENDER = {n: "M" if n in _MALE else "F" for n in NAMES}  # 50 / 50, and 40 / 40 among IOI_NAMES
PRONOUN = {"M": "he", "F": "she"}

FILLERS = ["went", "home", "walked", "away", "and", "then", "sat", "down", "laughed", "slept"]
FUNCTION_WORDS = ["When", "While", "After", "Then", "and", "went", "to", "the", "at", ",", ".",
                  "gave", "a", "handed", "it", "were", "got", "had", "long", "day", "brought",
                  "likes", "saw", "was", "with", "said", "hello", "met", "called", "also",
                  "sent", "showed", "passed", "threw", "he", "she", "former", "latter"]
SPECIAL = ["<bos>", "<eos>", "<pad>", "<unk>"]


def vocabulary() -> list[str]:
    """All tokens in a fixed order: specials first, then words (deduplicated)."""
    words: list[str] = []
    for w in SPECIAL + NAMES + PLACES + OBJECTS + FUNCTION_WORDS + FILLERS:
        if w not in words:
            words.append(w)
    return words


def make_ioi_prompt(rng: random.Random, names: list[str], split: str = "train", **fixed) -> IOIPrompt:
    """One IOI prompt from the grammar (see :func:`workbench.grammar.sample_prompt`)."""
    return grammar.sample_prompt(rng, names, split, **fixed)


def _fill(text: str, rng: random.Random) -> str:
    return text.replace("{P}", rng.choice(PLACES)).replace("{O}", rng.choice(OBJECTS))


def _vp(rng: random.Random, plural: bool = False) -> str:
    table = grammar.PLURAL_VPS if plural else grammar.SINGULAR_VPS
    return _fill(table[rng.choice(list(table))], rng)


def _transfer(rng: random.Random) -> str:
    return _fill(grammar.TRANSFERS[rng.choice(list(grammar.TRANSFERS))], rng)


def _different_gender(rng: random.Random, names: list[str]) -> tuple[str, str]:
    a = rng.choice(names)
    b = rng.choice([n for n in names if GENDER[n] != GENDER[a]])
    return a, b


def general_text(rng: random.Random, names: list[str]) -> str:
    """One sequence of general text over `names` (every name, held-out ones too, during training).

    Forms: a list of names repeated after a clause (copying); a person's day told with pronouns (so
    a name's gender matters); a transfer to a new recipient who then acts (the next name is not in
    context); the v1 "likes / saw" sentences; greetings that go both ways; and two people where the
    recipient was already named twice (the repeated name is the answer).
    """
    kind = rng.random()
    if kind < 0.2:
        group = rng.sample(names, rng.randint(2, 4))
        return f"{' and '.join(group)} {_vp(rng, True)} . {' and '.join(group)} {_vp(rng, True)} ."
    if kind < 0.4:
        a = rng.choice(names)
        he = PRONOUN[GENDER[a]]
        steps = [f"{he} {_vp(rng)} ." for _ in range(rng.choice([1, 2, 3, 4, 6, 8, 10, 12]))]
        return f"{a} {_vp(rng)} . {' '.join(steps)}"
    if kind < 0.5:
        a, b = _different_gender(rng, names)
        giver = rng.choice([a, b])
        other = b if giver == a else a
        pair = f"{a} and {b} {_vp(rng, True)}" if rng.random() < 0.5 else f"{a} met {b}"
        return f"{pair} . {PRONOUN[GENDER[giver]]} {_transfer(rng)} {other} ."
    if kind < 0.65:
        a, b, c = rng.sample(names, 3)
        return f"{a} {_transfer(rng)} {b} . {b} {_vp(rng)} . {b} {_transfer(rng)} {c} ."
    if kind < 0.75:
        a, b = rng.sample(names, 2)
        return f"{a} likes the {rng.choice(OBJECTS)} . {b} saw {a} at the {rng.choice(PLACES)} . {a} was with {b} ."
    if kind < 0.85:
        a, b = rng.sample(names, 2)
        return f"{a} met {b} . {a} said hello to {b} . {b} said hello to {a} ."
    a, b = rng.sample(names, 2)
    return f"{a} and {b} {_vp(rng, True)} . {b} {_vp(rng)} . {a} {_transfer(rng)} {b} ."


MAX_WORDS = 63  # general text fits a 64-token context with BOS


def _filler_prefix(rng: random.Random, room: int) -> str:
    """Up to 5 name-free sentences (never a held-out production's) within ``room`` words, so names also
    occur late in a sequence."""
    keys = [k for k in grammar.FILLER_SENTENCES if f"filler:{k}" not in grammar.HELDOUT_PRODUCTIONS]
    out: list[str] = []
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3, 5])):
        s = _fill(grammar.FILLER_SENTENCES[rng.choice(keys)], rng)
        if len(s.split()) > room:
            break
        out.append(s)
        room -= len(s.split())
    return " ".join(out)


IOI_FRACTION, ORDINAL_FRACTION, PRONOUN_FRACTION = 0.7, 0.25, 0.1  # the shipped model's training mix


def training_text(rng: random.Random, ioi_fraction: float = IOI_FRACTION, ordinal_fraction: float = ORDINAL_FRACTION,
                  pronoun_fraction: float = PRONOUN_FRACTION) -> str:
    """One training sequence: an IOI prompt with its answer, or general text over all names.

    A fraction of the IOI prompts names S2 by its place in the pair ("the former" / "the latter"),
    so that solving IOI by the order of the pair pays too, as it does for GPT-2 (the Pos attribute);
    another fraction calls S2 "he" / "she" (IO and S then differ in gender).
    """
    if rng.random() < ioi_fraction:
        u = rng.random()
        if u < pronoun_fraction:
            io, s = _different_gender(rng, IOI_NAMES)
            p = make_ioi_prompt(rng, IOI_NAMES, io=io, s=s)
            text = p.render(s2=PRONOUN[GENDER[s]])
        else:
            p = make_ioi_prompt(rng, IOI_NAMES)
            text = p.with_s2_form("ordinal").text if u < pronoun_fraction + ordinal_fraction else p.text
        return f"{text} {p.io} ."
    text = general_text(rng, NAMES)
    return " ".join(x for x in (_filler_prefix(rng, MAX_WORDS - len(text.split())), text) if x)
