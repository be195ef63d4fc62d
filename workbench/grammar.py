"""The toy world's IOI grammar: compositional frames, not a template list.

An IOI prompt introduces two people A and B, then one of them (S, the subject) acts on the other
(IO, the indirect object), and the model must name IO: "When Mary and John went to the store , John
gave a drink to" -> "Mary". Pos says which of A, B is IO: ``ABB`` (IO first) or ``BAB`` (S first).

A prompt is built from productions, each with an id (``opening:sub``, ``conj:While``, ``transfer:gave-a``,
...). Every choice point draws one production, so frames combine freely: optional name-free sentences
before and after the opening, subordinate / separate-sentence / coordinated / two-sentence openings,
several ways to introduce the pair, chains of predicates, several connectives and transfer verbs. The
names end up at widely varying absolute positions (S2 from about 5 to 45 tokens).

Held-out splits are made by construction:
- names: :data:`workbench.toyworld.HELDOUT_NAMES` never occur in a training IOI prompt;
- productions: :data:`HELDOUT_PRODUCTIONS` never occur in a training IOI prompt (their words do, in
  other productions or the general corpus), so a frame using one is a structure the model never saw;
- length: training prompts put S2 at most at :data:`TRAIN_MAX_S2`; the ``long`` split lies beyond.

A frame is the prompt text with the name slots ``{A}``, ``{B}`` (the pair) and ``{S}`` (S2) left open;
:meth:`IOIPrompt.with_names` re-renders the same frame with other names, which is how counterfactual
prompts are made everywhere.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence

PLACES = ["store", "park", "school", "garden", "station", "market", "beach", "office",
          "library", "river", "cafe", "museum"]
OBJECTS = ["drink", "book", "ball", "key", "ring", "bone", "apple", "letter", "kite",
           "coin", "hat", "cake"]

# Predicates. Plural ones follow "A and B"; singular ones a single name. Each is a word list with
# {P} / {O} slots; the id names the production.
PLURAL_VPS = {
    "went-to": "went to the {P}", "were-at": "were at the {P}", "got-at": "got a {O} at the {P}",
    "long-day": "had a long day", "long-day-at": "had a long day at the {P}", "met-at": "met at the {P}",
    "went-home": "went home", "walked-home": "walked home", "sat-down": "sat down", "laughed": "laughed",
    "walked-away": "walked away", "slept": "slept", "got": "got a {O}", "sat-at": "sat down at the {P}",
    "laughed-at": "laughed at the {P}",
}
SINGULAR_VPS = {
    "went-to": "went to the {P}", "was-at": "was at the {P}", "got": "got a {O}",
    "long-day": "had a long day", "went-home": "went home", "walked-home": "walked home",
    "sat-down": "sat down", "laughed": "laughed", "walked-away": "walked away", "slept": "slept",
    "likes": "likes the {O}", "had": "had a {O}", "sat-at": "sat down at the {P}",
}
# Ways to introduce the pair in one clause ({A} first, {B} second).
PAIR_CLAUSES = {
    "and": "{A} and {B} {VP}",
    "met": "{A} met {B}{AT}",
    "with": "{A} was with {B}{AT}",
    "saw": "{A} saw {B}{AT}",
    "called": "{A} called {B}",
    "hello": "{A} said hello to {B}",
}
CONJUNCTIONS = ["When", "While", "After"]
# What S does to IO: the prompt ends with these words, and IO comes next.
TRANSFERS = {
    "gave-a": "gave a {O} to", "gave-the": "gave the {O} to", "gave-it": "gave it to",
    "handed-a": "handed a {O} to", "handed-the": "handed the {O} to", "handed-it": "handed it to",
    "brought-a": "brought a {O} to", "brought-the": "brought the {O} to", "brought-it": "brought it to",
    "sent-a": "sent a {O} to", "showed-the": "showed the {O} to", "passed-the": "passed the {O} to",
    "threw-the": "threw the {O} to", "hello": "said hello to",
    # person-object verbs: no "to", IO still comes next
    "saw": "saw", "met": "met", "called": "called", "with": "was with",
}
TRANSFER_WEIGHTS = {k: (0.5 if k in ("saw", "met", "called", "with") else 1.0) for k in TRANSFERS}
# Name-free sentences that can stand before the opening or between the opening and the final clause.
FILLER_SENTENCES = {
    "long-day": "it was a long day .", "long-day-at": "it was a long day at the {P} .",
    "obj-at": "the {O} was at the {P} .", "day-at": "it was a day at the {P} .",
    "obj-long": "the {O} was long .", "then-day": "then it was day .", "day-long": "the day was long .",
    "also-long": "it was also a long day .", "day-at-long": "it was day at the {P} and it was long .",
    "then-long": "then it was a long day at the {P} .",
}
# How the opening hands over to the final clause.
COORDINATORS = {"and-then": ", and then", "and": ", and", "and-then-bare": "and then"}

HELDOUT_PRODUCTIONS = frozenset({
    "coord:and",            # "A and B went home , and S gave ..." — a connective
    "pair:with",            # "A was with B ..."
    "transfer:handed-it",   # "... S handed it to"
    "link:comma-then",      # "When A and B ... , then S gave ..."
    "filler:obj-at",        # "the O was at the P ."
    "subtail:filler",       # "When A and B ... , it was a long day . S gave ..." — a clause order
})
TRAIN_MAX_S2 = 32  # training prompts put S2 at token index <= this (BOS = index 0)
LONG_S2 = (TRAIN_MAX_S2 + 1, 44)  # the "long" split's S2 range

# Frame families: the top-level structure, reported separately by `workbench model eval`.
FAMILIES = ("subordinate", "sentence", "then-sentence", "coordinated", "separate")

# S2 said by its place in the pair instead of its name: "When Mary and John ... , the latter gave a drink to".
ORDINAL_S2 = {"ABB": "the latter", "BAB": "the former"}
S2_FORMS = ("name", "ordinal")  # how an IOIPrompt says S2: S's name, or ORDINAL_S2[pos]


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt: its frame, its names, and the productions it was built from."""

    frame: str  # text with {A} {B} {S} slots; places and objects filled in
    io: str  # indirect object: the correct answer
    s: str  # subject: the repeated name
    pos: str  # "ABB" (IO is the first of the pair) or "BAB" (S is)
    family: str  # one of FAMILIES
    productions: tuple[str, ...] = ()
    place: str = ""  # the frame's place and object (each frame uses at most one of each)
    obj: str = ""
    s2_form: str = "name"  # one of S2_FORMS: S2 is S's name, or its place in the pair (then Pos decides S)

    @property
    def text(self) -> str:
        """The prompt without its answer."""
        return self.render()

    def s2_text(self) -> str:
        """What the prompt says at S2: S's name, or "the former" / "the latter" for its place in the pair."""
        return self.s if self.s2_form == "name" else ORDINAL_S2[self.pos]

    def render(self, s2: str | None = None) -> str:
        """The text; ``s2`` replaces the second mention of S only (the "ABC" distribution)."""
        a, b = (self.io, self.s) if self.pos == "ABB" else (self.s, self.io)
        return self.frame.format(A=a, B=b, S=self.s2_text() if s2 is None else s2)

    def with_names(self, io: str | None = None, s: str | None = None, pos: str | None = None) -> "IOIPrompt":
        """The same frame with some of IO / S / Pos replaced (counterfactual prompts)."""
        q = dataclasses.replace(self, io=io or self.io, s=s or self.s, pos=pos or self.pos)
        if q.io == q.s:
            raise ValueError(f"IO and S must differ, got {q.io!r} for both")
        if q.pos not in ("ABB", "BAB"):
            raise ValueError(f"pos must be ABB or BAB, got {q.pos!r}")
        return q

    def with_s2_form(self, form: str) -> "IOIPrompt":
        """The same prompt saying S2 as `form` (one of S2_FORMS)."""
        if form not in S2_FORMS:
            raise ValueError(f"s2 form must be one of {', '.join(S2_FORMS)}, got {form!r}")
        return dataclasses.replace(self, s2_form=form)

    @property
    def template(self) -> str:
        """The frame family (kept under the old name for the harness's optional Template attribute)."""
        return self.family

    def s2_index(self) -> int:
        """Token index of S2 with BOS at index 0 (words are tokens in the toy world)."""
        return 1 + len(self.frame.split("{S}")[0].split())


class _Choices:
    """Draws productions at choice points, honouring an allowed set and remembering what it drew."""

    def __init__(self, rng: random.Random, heldout: str):
        self.rng, self.heldout, self.used = rng, heldout, []

    def pick(self, point: str, options: Sequence[str], weights: Sequence[float] | None = None) -> str:
        opts = list(options)
        w = list(weights) if weights is not None else [1.0] * len(opts)
        if self.heldout == "exclude":
            keep = [i for i, o in enumerate(opts) if f"{point}:{o}" not in HELDOUT_PRODUCTIONS]
            opts, w = [opts[i] for i in keep], [w[i] for i in keep]
        elif self.heldout == "prefer":  # held-out options become likely wherever they are offered
            w = [wi * (6.0 if f"{point}:{o}" in HELDOUT_PRODUCTIONS else 1.0) for wi, o in zip(w, opts)]
        choice = self.rng.choices(opts, weights=w)[0]
        self.used.append(f"{point}:{choice}")
        return choice

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


def _fill(text: str, rng: random.Random, place: str, obj: str) -> str:
    return text.replace("{P}", place).replace("{O}", obj)


def _predicate(c: _Choices, table: dict[str, str], point: str, max_extra: int) -> str:
    """One predicate, optionally chained with "and" (distinct predicates)."""
    first = c.pick(point, list(table))
    parts, seen = [table[first]], {first}
    for _ in range(max_extra):
        if not c.chance(0.35):
            break
        nxt = c.pick(point, [k for k in table if k not in seen])
        seen.add(nxt)
        parts.append(table[nxt])
    return " and ".join(parts)


def _pair_clause(c: _Choices) -> str:
    kind = c.pick("pair", list(PAIR_CLAUSES), [4, 1, 1, 1, 0.7, 0.7])
    at = " at the {P}" if c.chance(0.5) else ""
    vp = _predicate(c, PLURAL_VPS, "vp", 2) if kind == "and" else ""
    return PAIR_CLAUSES[kind].replace("{VP}", vp).replace("{AT}", at)


def _fillers(c: _Choices, n: int, last: str | None = None) -> list[str]:
    """n name-free sentences, never the same one twice in a row."""
    out = []
    for _ in range(n):
        key = c.pick("filler", [k for k in FILLER_SENTENCES if FILLER_SENTENCES[k] != last])
        last = FILLER_SENTENCES[key]
        out.append(last)
    return out


def _final(c: _Choices) -> str:
    """S [also] [predicate and] transfer."""
    pre = ""
    if c.chance(0.3):
        pre = _predicate(c, SINGULAR_VPS, "svp", 0) + " and "
    verb = c.pick("transfer", list(TRANSFERS), list(TRANSFER_WEIGHTS.values()))
    also = "also " if verb not in ("saw", "met", "called", "with") and c.chance(0.1) else ""
    return "{S} " + pre + also + TRANSFERS[verb]


def sample_frame(rng: random.Random, heldout: str = "exclude", target_s2: int | None = None) -> tuple[str, str, tuple[str, ...], str, str]:
    """One frame: (text with {A} {B} {S} slots, family, productions used, place, object).

    ``heldout``: ``exclude`` (training: no held-out production), ``prefer`` (held-out productions
    drawn often; the caller keeps frames that used one) or ``any``. ``target_s2``: name-free filler
    sentences are added before the opening (and, where the structure allows, between the opening and
    the final clause) until S2 reaches about this token index; by default none or one is drawn.
    """
    c = _Choices(rng, heldout)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    opening = c.pick("opening", ["sub", "sentence", "then", "coord", "separate"], [3, 2, 1, 1, 1.2])
    final = _final(c)
    between_ok = opening in ("sentence", "then", "separate")
    lead = ""
    if opening == "sub":
        conj = c.pick("conj", CONJUNCTIONS)
        intro, family = f"{conj} {_pair_clause(c)} ,", "subordinate"
        if c.pick("subtail", ["none", "filler"], [4, 1]) == "filler":  # a main clause, then S in a new sentence
            intro += " " + _fillers(c, 1)[0]
            between_ok = True
        elif c.pick("link", ["comma", "comma-then"], [3, 1]) == "comma-then":
            lead = "then"
    elif opening == "coord":
        coord = c.pick("coord", list(COORDINATORS))
        intro, family = f"{_pair_clause(c)} {COORDINATORS[coord]}", "coordinated"
    else:
        if opening == "separate":
            first = "{A} " + _predicate(c, SINGULAR_VPS, "svp", 1) + " ."
            second = "{B} " + _predicate(c, SINGULAR_VPS, "svp", 1) + " ."
            intro, family = f"{first} {second}", "separate"
        elif opening == "then":
            comma = c.pick("then", ["comma", "bare"], [2, 1]) == "comma"
            intro, family = f"Then {', ' if comma else ''}{_pair_clause(c)} .", "then-sentence"
        else:
            intro, family = f"{_pair_clause(c)} .", "sentence"
    if between_ok:
        link = c.pick("link", ["none", "then", "Then-comma"], [3, 1, 1])
        lead = {"none": "", "then": "then", "Then-comma": "Then ,"}[link]
    before: list[str] = []
    between: list[str] = []

    def s2() -> int:
        return 1 + sum(len(x.split()) for x in [*before, intro, *between, lead])

    def add_filler() -> None:
        where = between if between_ok and c.chance(0.5) else before
        where.extend(_fillers(c, 1, where[-1] if where else None))

    if target_s2 is None:
        if c.chance(0.3):
            add_filler()
    else:
        while s2() < target_s2 - 2:
            add_filler()
    text = " ".join(w for w in [*before, intro, *between, lead, final] if w)
    return _fill(text, rng, place, obj), family, tuple(c.used), place, obj


def s2_index(frame: str) -> int:
    return 1 + len(frame.split("{S}")[0].split())


def sample_prompt(rng: random.Random, names: Sequence[str], split: str = "train", pos: str | None = None,
                  io: str | None = None, s: str | None = None, family: str | None = None) -> IOIPrompt:
    """One IOI prompt of a split; any of pos / io / s / family may be fixed by the caller.

    Splits (names are the caller's): ``train`` (no held-out production, S2 <= TRAIN_MAX_S2, the S2
    position spread evenly), ``productions`` (at least one held-out production, same lengths),
    ``long`` (training productions, S2 in LONG_S2), ``any`` (everything).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    heldout = {"train": "exclude", "productions": "prefer", "long": "exclude", "any": "any"}[split]
    lo, hi = LONG_S2 if split == "long" else (1, TRAIN_MAX_S2) if split != "any" else (1, LONG_S2[1])
    for _ in range(1000):
        target = rng.randint(max(lo, 5), hi)  # spread S2 evenly over the split's range
        frame, fam, used, place, obj = sample_frame(rng, heldout, target)
        if family is not None and fam != family:
            continue
        if split == "productions" and not HELDOUT_PRODUCTIONS.intersection(used):
            continue
        if lo <= s2_index(frame) <= hi:
            break
    else:
        raise ValueError(f"could not sample a {split!r} prompt of family {family!r}")
    pos = pos or rng.choice(["ABB", "BAB"])
    io = io or rng.choice(list(names))
    s = s or rng.choice([n for n in names if n != io])
    if io == s:
        raise ValueError(f"IO and S must differ, got {io!r} for both")
    return IOIPrompt(frame, io, s, pos, fam, used, place, obj)


SPLITS = ("train", "productions", "long", "any")
