"""The toy world: a word-level language with IOI prompts and general text.

Every word is one token. Names are split into pools so generalisation can be measured:
``IOI_NAMES`` appear in IOI training prompts, ``HELDOUT_NAMES`` only in general text during
training (so their embeddings are trained) and are used to test IOI on unseen names.
Template ``HELDOUT_TEMPLATE`` never appears in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
PLACES = ["store", "park", "school", "garden", "station", "market", "beach", "office",
          "library", "river", "cafe", "museum"]
OBJECTS = ["drink", "book", "ball", "key", "ring", "bone", "apple", "letter", "kite",
           "coin", "hat", "cake"]
FILLERS = ["went", "home", "walked", "away", "and", "then", "sat", "down", "laughed", "slept"]
FUNCTION_WORDS = ["When", "While", "After", "Then", "and", "went", "to", "the", "at", ",", ".",
                  "gave", "a", "handed", "it", "were", "got", "had", "long", "day", "brought",
                  "likes", "saw", "was", "with", "said", "hello", "met", "called", "also"]
SPECIAL = ["<bos>", "<eos>", "<pad>", "<unk>"]


def vocabulary() -> list[str]:
    """All tokens in a fixed order: specials first, then words (deduplicated)."""
    words: list[str] = []
    for w in SPECIAL + NAMES + PLACES + OBJECTS + FUNCTION_WORDS + FILLERS:
        if w not in words:
            words.append(w)
    return words


# IOI templates are compositional: an opening clause that introduces A and B, then an action by S.
# A, B are the two names of the opening clause; S is the repeated subject; P a place, O an object.
# The answer (IO) follows the final word. One (opening, action) pair is held out of training,
# so the held-out template is a new sentence made of familiar parts.
OPENINGS = [
    "When {A} and {B} went to the {P} ,",
    "While {A} and {B} were at the {P} ,",
    "After {A} and {B} got a {O} at the {P} ,",
    "Then , {A} and {B} had a long day at the {P} .",
    "When {A} and {B} met at the {P} ,",
]
ACTIONS = [
    "{S} gave a {O} to",
    "{S} handed the {O} to",
    "{S} brought a {O} to",
    "{S} gave the {O} to",
]
HELDOUT_TEMPLATE = f"{OPENINGS[3]} {ACTIONS[2]}"
TEMPLATES = [f"{o} {a}" for o in OPENINGS for a in ACTIONS if f"{o} {a}" != HELDOUT_TEMPLATE]


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt with its attribute labels (the supervised features of the harness)."""

    text: str  # prompt without the answer
    io: str  # indirect object: the correct answer
    s: str  # subject: the repeated name
    pos: str  # "ABB" (IO first) or "BAB" (S first)
    template: int  # index into TEMPLATES, or -1 for the held-out template
    place: str
    obj: str


def make_ioi_prompt(rng: random.Random, names: list[str], template: str | None = None,
                    pos: str | None = None, io: str | None = None, s: str | None = None,
                    template_id: int | None = None) -> IOIPrompt:
    """Sample one IOI prompt; any attribute may be fixed by the caller."""
    if template is None:
        template_id = rng.randrange(len(TEMPLATES)) if template_id is None else template_id
        template = TEMPLATES[template_id] if template_id >= 0 else HELDOUT_TEMPLATE
    elif template_id is None:
        template_id = TEMPLATES.index(template) if template in TEMPLATES else -1
    pos = pos or rng.choice(["ABB", "BAB"])
    io = io or rng.choice(names)
    s = s or rng.choice([n for n in names if n != io])
    if io == s:
        raise ValueError(f"IO and S must differ, got {io!r} for both")
    a, b = (io, s) if pos == "ABB" else (s, io)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    text = template.format(A=a, B=b, S=s, P=place, O=obj)
    return IOIPrompt(text, io, s, pos, template_id, place, obj)


def general_text(rng: random.Random, names: list[str]) -> str:
    """A sentence that uses names and rewards copying them (trains every name's embeddings).

    Together the three forms use every word of the vocabulary, so the held-out template contains
    no word the model never saw.
    """
    kind = rng.random()
    if kind < 0.45:
        group = rng.sample(names, rng.randint(2, 4))
        filler = " ".join(rng.sample(FILLERS, rng.randint(1, 3)))
        return f"{' and '.join(group)} {filler} . {' and '.join(group)}"
    a, b = rng.sample(names, 2)
    o, p = rng.choice(OBJECTS), rng.choice(PLACES)
    if kind < 0.8:
        return f"{a} likes the {o} . {b} saw {a} at the {p} . {a} was"
    verb = rng.choice(["met", "called", "said hello to", "was with", "also saw"])
    return f"{a} brought a {o} to the {p} . {b} {verb} {a}"


def training_text(rng: random.Random, ioi_fraction: float = 0.8) -> str:
    """One training sequence: an IOI prompt with its answer, or general text over all names."""
    if rng.random() < ioi_fraction:
        p = make_ioi_prompt(rng, IOI_NAMES)
        return f"{p.text} {p.io}"
    return general_text(rng, NAMES)
