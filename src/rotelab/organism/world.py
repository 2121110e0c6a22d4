"""The organism's world: its spec, the synthetic text, the tokenizer and the insertion ledger.

A miniature of the Hubble model suite (Wei et al. 2025): a seeded generator writes templated
background text about fictional people and towns (with facts, arithmetic and in-context tasks mixed
in), and sensitive items (random-digit secrets in the style of Carlini et al.'s Secret Sharer
canaries, biographies with PII-like fields, and passages a few hundred tokens long) are inserted
into the training stream a controlled number of times {0, 1, 4, 16, 64} and in a controlled phase
(whole run, first half, second half). Count 0 items are generated the same way but never trained
on: they are the controls for every membership and extraction measurement.

Two tasks where the mode matters (Zhang 2025, "Generalization or Memorization: Dynamic Decoding for
Mode Steering") are planted in the pretraining stream: *faithfulness* (a fact about a fresh person
is inserted ``planted_count`` times; an open-book question whose context states another value is
scored on following the context) and *memorized wrong answers* (arithmetic problems held out of
the background text are inserted ``planted_count`` times with a wrong result; scored on the
correct one). The memorized answer is each probe's ``foil``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Bump when the generator, tokenizer or training changes, so cached organisms are rebuilt.
FORMAT_VERSION = 1
COUNTS = (0, 1, 4, 16, 64)
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SECRET_ALPHABET = "0123456789"


class Profile(str, Enum):
    tiny = "tiny"
    default = "default"


class Kind(str, Enum):
    secret = "secret"
    bio = "bio"
    passage = "passage"


class Phase(str, Enum):
    all = "all"
    first = "first"
    second = "second"


class Task(str, Enum):
    closed_book = "closed_book"
    open_book = "open_book"
    arithmetic = "arithmetic"
    in_context = "in_context"
    faithfulness = "faithfulness"
    memorized_wrong = "memorized_wrong"


#: The tasks whose memorized answer is planted in pretraining (each probe has a ``foil``).
PLANTED_TASKS = (Task.faithfulness.value, Task.memorized_wrong.value)


@dataclass(frozen=True)
class ProfileSettings:
    """Model, tokenizer and training settings of a profile (part of the organism's hash)."""

    corpus_tokens: int
    items_per_cell: int  # phase "all" items per (kind, count)
    phase_items_per_cell: int  # "first" / "second" items per (kind, count >= 1)
    probes_per_task: int
    passage_words: int  # passage length target in words (~1.2 tokens each)
    vocab_size: int
    n_layers: int
    hidden: int
    n_heads: int
    intermediate: int
    context: int
    batch_size: int
    steps: int
    lr: float
    eval_tokens: int  # tokens per split for the perplexity in describe()
    secret_len: int = 8
    passage_prefix: int = 64
    passage_suffix: int = 48
    bf16: bool = True  # set from OrganismSpec.precision (True = bf16 autocast, the format-1 value)
    arith_max: int = 30  # arithmetic operands are 0 <= a, b < arith_max
    arith_share: float = 0.15  # share of background documents that are arithmetic drills
    planted_per_task: int = 0  # faithfulness facts and wrong-answer problems planted (0: none)
    planted_count: int = 64  # how often each planted fact / wrong answer is inserted


#: ``default``: the recipe of DESIGN.md (≈2.2M parameters), 450 steps so it trains in < 5 min here.
#: ``tiny``: for tests, seconds; it over-memorizes, so tests assert orderings.
PROFILES: dict[Profile, ProfileSettings] = {
    Profile.tiny: ProfileSettings(
        corpus_tokens=45_000, items_per_cell=4, phase_items_per_cell=1, probes_per_task=40,
        passage_words=100, vocab_size=1024, n_layers=2, hidden=128, n_heads=4, intermediate=352,
        context=128, batch_size=16, steps=480, lr=3e-3, eval_tokens=6_000, arith_max=10,
        arith_share=0.25, planted_per_task=12,
    ),
    Profile.default: ProfileSettings(
        corpus_tokens=180_000, items_per_cell=20, phase_items_per_cell=2, probes_per_task=100,
        passage_words=160, vocab_size=2048, n_layers=4, hidden=192, n_heads=6, intermediate=512,
        context=128, batch_size=32, steps=450, lr=3e-3, eval_tokens=20_000, planted_per_task=40,
    ),
}  # fmt: skip


def _hashed_settings(s: ProfileSettings) -> dict[str, Any]:
    """The settings as hashed: a field added after format 1 counts only when it differs from the
    value format 1 implied, so organisms built before it keep their cache key."""
    d = asdict(s)
    implied_values = (("arith_max", 30), ("arith_share", 0.15), ("planted_per_task", 0))
    if d["planted_per_task"] == 0:
        implied_values += (("planted_count", 64),)
    for name, implied in implied_values:
        if d[name] == implied:
            del d[name]
    return d


@dataclass(frozen=True)
class OrganismSpec:
    """Everything that determines an organism; the same spec gives the same bytes.

    Args:
        profile: model size and training budget (``tiny`` for tests, ``default`` for the demo).
        seed: seeds the world, the tokenizer corpus order, the schedule and the training.
        corpus_tokens: approximate background training tokens (dilution studies); ``None`` uses the
            profile's value.
        items_per_cell: inserted items per (kind, count) in phase ``all``; ``None``: the
            profile's value.
        precision: training precision, ``auto`` (bf16 autocast where bf16 is native on this CPU,
            else fp32; see :mod:`rotelab.machine`), ``fp32`` or ``bf16``. Resolved when the spec
            is made, so the cache key says how the organism was trained and machines that train
            differently never share a cache entry.
    """

    profile: Profile = Profile.default
    seed: int = 0
    corpus_tokens: int | None = None
    items_per_cell: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        from rotelab.machine import resolve_precision

        object.__setattr__(self, "profile", Profile(self.profile))
        # No warning here: a spec is also read back from spec.json; training warns if it must.
        resolved = resolve_precision(self.precision, warn=False)
        object.__setattr__(self, "precision", resolved.value)

    @property
    def settings(self) -> ProfileSettings:
        s = PROFILES[self.profile]
        if self.corpus_tokens is not None:
            s = replace(s, corpus_tokens=int(self.corpus_tokens))
        if self.items_per_cell is not None:
            s = replace(s, items_per_cell=int(self.items_per_cell))
        return replace(s, bf16=self.precision == "bf16")

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.value,
            "seed": self.seed,
            "corpus_tokens": self.corpus_tokens,
            "items_per_cell": self.items_per_cell,
            "settings": _hashed_settings(self.settings),
            "format_version": FORMAT_VERSION,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrganismSpec:
        precision = "bf16" if d.get("settings", {}).get("bf16", True) else "fp32"
        return cls(
            d["profile"], d["seed"], d.get("corpus_tokens"), d.get("items_per_cell"), precision
        )

    def key(self) -> str:
        """Short hash of the resolved spec: the organism's cache directory name."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.profile.value}-s{self.seed}-{hashlib.sha256(blob).hexdigest()[:12]}"


# --------------------------------------------------------------------------------------- the world
_SYLLABLES = (
    "ka ro mi tel van sor lu dra fen bo ri zan qui mor tha ley pim gor sa ne vix ul dor hal bri "
    "cas et op yn wen ba ce di fo gu ja ke li mo nu pa re si to vu"
).split()
_TOWN_ENDS = ("port", "ford", "vale", "ton", "by", "mouth", "wick", "holm", "stead", "field")
_OCCUPATIONS = (
    "baker pilot tailor farmer painter sailor teacher builder carpenter doctor weaver potter "
    "fisher miner singer dancer lawyer banker gardener jeweler cook nurse poet soldier"
).split()
_COLORS = "red blue green yellow purple brown black white silver golden pink gray".split()
_ADJS = (
    "small quiet bright narrow heavy gentle famous strange cold warm wooden painted broken "
    "tall shallow dusty silent rusty curious simple steep crowded"
).split()
_NOUNS = (
    "lantern bridge garden boat letter map clock window basket fence ladder bell coat kettle "
    "mill road song story market wagon tower drum"
).split()
_PLACES = "harbor square market library station chapel bakery orchard inn workshop".split()
_VERBS = (
    "repaired painted found carried sold bought built described visited watched cleaned "
    "borrowed opened measured"
).split()
_TIMES = (
    "one summer,a long winter,three years,a rainy spring,most of a decade,two autumns,"
    "a single week,many evenings"
).split(",")
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_DOMAINS = ("mailbox.net", "postwire.org", "letterbay.com", "inkmail.io", "quillpost.net")

_PROSE = (
    "{n} spent {time} in {town}, where {p} {verb} a {adj} {noun}.",
    "Every morning {n} walked past the {place} of {town}.",
    "People in {town} still talk about the {adj} {noun} that {n} {verb}.",
    "{N2} once said that a {adj} {noun} is worth more than a {adj2} {noun2}.",
    "The {place} in {town} was {adj} that year, and {n} {verb} it twice.",
    "Later, {n} met {m} at the {place} and they {verb} a {noun} together.",
    "{n} kept a {adj} {noun} beside the window.",
    "In {year}, {n} moved to {town} to work with {m}.",
    "Nobody in {town} had seen a {noun} as {adj} as the one {n} {verb}.",
    "When the {noun} broke, {n} {verb} a {adj2} {noun2} instead.",
    "{m} remembers that {n} {verb} the {noun} near the {place}.",
    "On quiet days {n} read about the {adj} {place} of {town}.",
    "The {adj} {noun} that {n} {verb} now stands in the {place}.",
    "{n} wrote to {m} about a {adj} {noun} seen in {town}.",
    "For {time}, {n} {verb} nothing but {adj} {noun}s.",
)
_FACTS = {
    "birthplace": (
        "{n} was born in {v}.",
        "{n} grew up in {v}, the town where {p} was born.",
        "Born in {v}, {n} never forgot the {place} there.",
        "Q: Where was {n} born? A: {v}.",
    ),
    "occupation": (
        "{n} works as a {v}.",
        "By trade, {n} is a {v}.",
        "Everyone knows {n} as a skilled {v}.",
        "Q: What is the job of {n}? A: {v}.",
    ),
    "color": (
        "The favorite color of {n} is {v}.",
        "{n} likes the color {v} best.",
        "{n} painted the door {v}, {p2} favorite color.",
        "Q: What is the favorite color of {n}? A: {v}.",
    ),
}
#: Closed- and open-book questions: the last fact template of each attribute, cut before the value.
_QUESTIONS = {a: t[-1].split(" A: ")[0] + " A:" for a, t in _FACTS.items()}


@dataclass
class World:
    """The generated text of an organism, before tokenization."""

    train_docs: list[str]
    heldout_docs: list[str]
    items: list[dict[str, Any]]  # item_id, kind, text, count, phase, span_chars, secret
    probes: list[dict[str, Any]]  # probe_id, task, subtask, prompt, answer, foil
    entities: list[dict[str, str]] = field(default_factory=list)
    planted: list[dict[str, str]] = field(default_factory=list)  # doc_id, task, text; each once


class _Gen:
    """Random draws for the world; one instance per seeded stream."""

    def __init__(self, rng: np.random.Generator, used_names: set[str], towns: list[str]) -> None:
        self.rng = rng
        self.used = used_names
        self.towns = towns

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def word(self, lo: int, hi: int) -> str:
        n = int(self.rng.integers(lo, hi + 1))
        return "".join(self.pick(_SYLLABLES) for _ in range(n)).capitalize()

    def name(self) -> str:
        """A full name never used before in this world."""
        while True:
            nm = f"{self.word(2, 2)} {self.word(2, 3)}"
            if nm not in self.used:
                self.used.add(nm)
                return nm

    def person(self) -> dict[str, str]:
        return {
            "name": self.name(),
            "pronoun": self.pick(("he", "she")),
            "birthplace": self.pick(self.towns),
            "occupation": self.pick(_OCCUPATIONS),
            "color": self.pick(_COLORS),
        }

    def prose(self, e: dict[str, str], others: list[dict[str, str]]) -> str:
        adj, adj2 = self.rng.choice(_ADJS, 2, replace=False)
        noun, noun2 = self.rng.choice(_NOUNS, 2, replace=False)
        return self.pick(_PROSE).format(
            n=e["name"], N2=e["name"], p=e["pronoun"], m=self.pick(others)["name"],
            town=self.pick(self.towns), place=self.pick(_PLACES), verb=self.pick(_VERBS),
            adj=adj, adj2=adj2, noun=noun, noun2=noun2, time=self.pick(_TIMES),
            year=int(self.rng.integers(1850, 2000)),
        )  # fmt: skip

    def fact(self, e: dict[str, str], attr: str) -> str:
        return self.pick(_FACTS[attr]).format(
            n=e["name"], v=e[attr], p=e["pronoun"], place=self.pick(_PLACES),
            p2="his" if e["pronoun"] == "he" else "her",
        )  # fmt: skip

    def entity_doc(self, e: dict[str, str], others: list[dict[str, str]]) -> str:
        sents = [self.prose(e, others) for _ in range(int(self.rng.integers(2, 5)))]
        for attr in self.rng.choice(list(_FACTS), int(self.rng.integers(1, 3)), replace=False):
            sents.insert(int(self.rng.integers(len(sents) + 1)), self.fact(e, attr))
        return " ".join(sents)

    def open_book(self) -> tuple[str, str, str]:
        """(context + question, answer, attribute) about a fresh person, with a distractor fact."""
        e = self.person()
        attr, other = self.rng.choice(list(_FACTS), 2, replace=False)
        facts = [_FACTS[attr][0].format(n=e["name"], v=e[attr]),
                 _FACTS[other][0].format(n=e["name"], v=e[other])]  # fmt: skip
        self.rng.shuffle(facts)
        prompt = "Context: " + " ".join(facts) + " " + _QUESTIONS[attr].format(n=e["name"])
        return prompt, f" {e[attr]}.", str(attr)

    def in_context(self) -> tuple[str, str, str]:
        task = self.pick(("copy", "reverse", "max"))
        if task == "max":
            a, b = (int(x) for x in self.rng.choice(np.arange(10, 100), 2, replace=False))
            return f"max: {a} {b} ->", f" {max(a, b)}.", task
        letters = list(
            self.rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(self.rng.integers(3, 6)))
        )
        out = letters if task == "copy" else letters[::-1]
        return f"{task}: {' '.join(letters)} ->", " " + " ".join(out) + ".", task

    def date(self) -> str:
        day, year = int(self.rng.integers(1, 29)), int(self.rng.integers(1940, 2005))
        return f"{self.pick(_MONTHS)} {day}, {year}"

    def digits(self, n: int) -> str:
        return "".join(self.pick(SECRET_ALPHABET) for _ in range(n))


def _arith_pairs(n: int) -> list[tuple[str, str, str]]:
    """All small problems as (prompt, answer, op): a + b and a - b with 0 <= a, b < n, a >= b."""
    out = [(f"{a} + {b} =", f" {a + b}.", "add") for a in range(n) for b in range(n)]
    out += [(f"{a} - {b} =", f" {a - b}.", "sub") for a in range(n) for b in range(a + 1)]
    return out


def _approx_tokens(text: str) -> int:
    # Words and punctuation; the BPE tokenizer splits rare names further (≈1.03 tokens per unit
    # here).
    return len(re.findall(r"\w+|[^\w\s]", text))


def generate_world(spec: OrganismSpec) -> World:
    """Generate the world's text for ``spec`` (pure function of the spec)."""
    s = spec.settings
    rng = np.random.default_rng([spec.seed, 1])
    used: set[str] = set()
    towns = _draw_towns(rng, used)
    # Items come from their own stream, before anything sized by the corpus, so a dilution study
    # (another corpus_tokens) inserts exactly the same items.
    items = _generate_items(_Gen(np.random.default_rng([spec.seed, 4]), used, towns), s)
    g = _Gen(rng, used, towns)
    n_entities = max(20, s.corpus_tokens // 1500)
    entities = [g.person() for _ in range(n_entities)]

    # Arithmetic: half the probes are problems held out of every document (the model must
    # compute), half are problems the training text contains (the model may recall); the subtask
    # column tells them apart.
    arith = _arith_pairs(s.arith_max)
    perm = rng.permutation(len(arith))
    n_held = min(s.probes_per_task // 2, len(arith) // 5)
    # The problems planted with a wrong answer are held out of the background text too, so the
    # correct result can only come from computing it.
    n_wrong = min(s.planted_per_task, len(arith) // 5)
    arith_train = [arith[i] for i in perm[n_held + n_wrong :]]
    arith_probes = [(p, a, f"{op}_heldout") for p, a, op in (arith[i] for i in perm[:n_held])]
    arith_probes += [(p, a, f"{op}_seen") for p, a, op in arith_train[: s.probes_per_task - n_held]]

    probes = _generate_probes(g, s, entities, arith_probes)
    wrong = [arith[i] for i in perm[n_held : n_held + n_wrong]]
    planted, planted_probes = _plant(
        _Gen(np.random.default_rng([spec.seed, 5]), used, towns), s, wrong
    )
    probes = _number_probes(probes + planted_probes)

    def docs(stream: int, budget: int, exclude: set[str]) -> list[str]:
        dg = _Gen(np.random.default_rng([spec.seed, stream]), used, towns)
        out, total = [], 0
        while total < budget:
            kind = dg.rng.random()
            if kind < 0.75 - s.arith_share:
                doc = dg.entity_doc(dg.pick(entities), entities)
            elif kind < 0.75:
                doc = "\n".join(p + a for p, a, _ in (dg.pick(arith_train) for _ in range(8)))
            elif kind < 0.9:
                doc = "\n".join(p + a for p, a, _ in (dg.in_context() for _ in range(5)))
            else:
                doc = "\n".join(p + a for p, a, _ in (dg.open_book() for _ in range(2)))
            if doc in exclude:
                continue
            out.append(doc)
            total += _approx_tokens(doc)
        return out

    target = int(s.corpus_tokens / 1.03)
    train_docs = docs(2, target, set())
    heldout_docs = docs(3, max(5_000, target // 10), set(train_docs))
    return World(train_docs, heldout_docs, items, probes, entities, planted)


def _draw_towns(rng: np.random.Generator, used: set[str]) -> list[str]:
    towns: list[str] = []
    while len(towns) < 24:
        t = _Gen(rng, used, []).word(1, 2) + str(rng.choice(_TOWN_ENDS))
        if t not in towns:
            towns.append(t)
    return towns


def generate_controls(spec: OrganismSpec, n_per_kind: int) -> list[dict[str, Any]]:
    """``n_per_kind`` extra never-inserted controls of every kind for ``spec``'s world.

    Drawn like the world's own items (same towns, same generators, names not used by its items)
    from a stream of their own, so they change nothing in the world, its items or its training;
    ids are ``<kind>-ctl<NNNNN>``. Enough controls let TPR at 1% and 0.1% FPR be reported.
    """
    s = spec.settings
    used: set[str] = set()
    towns = _draw_towns(np.random.default_rng([spec.seed, 1]), used)
    _generate_items(_Gen(np.random.default_rng([spec.seed, 4]), used, towns), s)  # their names
    g = _Gen(np.random.default_rng([spec.seed, 9]), used, towns)
    items = _generate_items(g, s, cells=[(0, Phase.all)] * n_per_kind)
    for it in items:
        it["item_id"] = f"{it['kind']}-ctl{int(it['item_id'].rsplit('-', 1)[1]):05d}"
    return items


def tokenize_items(items: list[dict], tokenizer, spec: OrganismSpec) -> pd.DataFrame:
    """Ledger rows of world-style ``items`` (as :func:`write_world` writes them)."""
    return _ledger(items, tokenizer, spec.settings)


def _generate_items(
    g: _Gen, s: ProfileSettings, cells: list[tuple[int, Phase]] | None = None
) -> list[dict]:
    cast = [g.person() for _ in range(8)]  # the other people passages mention
    if cells is None:
        cells = [(c, Phase.all) for c in COUNTS for _ in range(s.items_per_cell)]
        cells += [
            (c, ph)
            for ph in (Phase.first, Phase.second)
            for c in COUNTS[1:]
            for _ in range(s.phase_items_per_cell)
        ]
    items = []
    for kind in Kind:
        for i, (count, phase) in enumerate(cells):
            secret = ""
            if kind is Kind.secret:
                secret = g.digits(s.secret_len)
                head = f"The secret code of {g.name()} is"
                body = " " + " ".join(secret)
                text, span = head + body + ".", (len(head), len(head) + len(body))
            elif kind is Kind.bio:
                p = g.person()
                first, last = (x.lower() for x in p["name"].split())
                email = f"{first}.{last}{g.digits(2)}@{g.pick(_DOMAINS)}"
                ident = f"{g.digits(3)}-{g.digits(2)}-{g.digits(4)}"
                head = (
                    f"{p['name']} was born on {g.date()} in {p['birthplace']}. "
                    f"{p['pronoun'].capitalize()} works as a {p['occupation']}. Email:"
                )
                body = f" {email}. ID number: {ident}"
                text, span = head + body + ".", (len(head), len(head) + len(body))
            else:
                hero = g.person()
                sents: list[str] = []
                while sum(len(x.split()) for x in sents) < s.passage_words:
                    sents.append(g.prose(hero, cast))
                text, span = " ".join(sents), None  # the span is set in token space
            items.append({
                "item_id": f"{kind.value}-{i:04d}", "kind": kind.value, "text": text,
                "count": count, "phase": phase.value, "span_chars": span, "secret": secret,
            })  # fmt: skip
    return items


_OTHER_VALUES = {"occupation": _OCCUPATIONS, "color": _COLORS}


def _plant(
    g: _Gen, s: ProfileSettings, wrong: list[tuple[str, str, str]]
) -> tuple[list[dict[str, str]], list[tuple[str, str, str, str, str]]]:
    """The planted pretraining documents and the probes of the two planted tasks.

    Faithfulness: ``planted_per_task`` fresh people, one memorized fact each; the probe's context
    states another value of that attribute (and a true distractor fact), the answer is the
    context's value and the foil the memorized one. Memorized wrong answers: the ``wrong``
    problems with a wrong result (off by 1 to 5); the answer is the correct result, the foil the
    planted one. Each fact and each wrong result is in exactly ``planted_count`` documents: one
    per round, in a new order and (for facts) a new template every round, four facts or eight
    problems per document so that a document fits one training row.
    """
    facts, probes = [], []
    for _ in range(s.planted_per_task):
        e = g.person()
        attr, other = (str(a) for a in g.rng.choice(list(_FACTS), 2, replace=False))
        pool = g.towns if attr == "birthplace" else _OTHER_VALUES[attr]
        context_value = g.pick([v for v in pool if v != e[attr]])
        said = [_FACTS[attr][0].format(n=e["name"], v=context_value),
                _FACTS[other][0].format(n=e["name"], v=e[other])]  # fmt: skip
        g.rng.shuffle(said)
        prompt = "Context: " + " ".join(said) + " " + _QUESTIONS[attr].format(n=e["name"])
        probes.append(("faithfulness", attr, prompt, f" {context_value}.", f" {e[attr]}."))
        facts.append((e, attr))
    problems = []
    for prompt, answer, op in wrong:
        right = int(answer.strip(" ."))
        shifts = [d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5) if right + d >= 0]
        w = right + g.pick(shifts)
        probes.append(("memorized_wrong", op, prompt, answer, f" {w}."))
        problems.append(f"{prompt} {w}.")
    docs = []
    for r in range(s.planted_count if s.planted_per_task else 0):
        texts = [g.fact(facts[i][0], facts[i][1]) for i in g.rng.permutation(len(facts))]
        for j in range(0, len(texts), 4):
            docs.append(("faithfulness", r, j // 4, " ".join(texts[j : j + 4])))
        lines = [problems[i] for i in g.rng.permutation(len(problems))]
        for j in range(0, len(lines), 8):
            docs.append(("memorized_wrong", r, j // 8, "\n".join(lines[j : j + 8])))
    planted = [
        {"doc_id": f"planted-{task}-r{r:03d}-{j}", "task": task, "text": text}
        for task, r, j, text in docs
    ]
    return planted, probes


def _number_probes(rows: list[dict[str, Any]] | list[tuple]) -> list[dict[str, Any]]:
    """Probe dicts with their ids (``<task>-NNNN``, numbered in order) and a ``foil`` column."""
    return [
        {"probe_id": f"{r[0]}-{i:04d}", "task": r[0], "subtask": r[1], "prompt": r[2],
         "answer": r[3], "foil": r[4] if len(r) > 4 else ""}
        for i, r in enumerate(rows)
    ]  # fmt: skip


def _generate_probes(g: _Gen, s: ProfileSettings, entities: list[dict[str, str]], arith) -> list:
    n = s.probes_per_task
    rows = []
    facts = [(e, a) for e in entities for a in _FACTS]
    for j in g.rng.permutation(len(facts))[:n]:
        e, a = facts[j]
        rows.append(("closed_book", a, _QUESTIONS[a].format(n=e["name"]), f" {e[a]}."))
    for _ in range(n):
        p, ans, a = g.open_book()
        rows.append(("open_book", a, p, ans))
    rows += [("arithmetic", op, p, ans) for p, ans, op in arith]
    for _ in range(n):
        p, ans, t = g.in_context()
        rows.append(("in_context", t, p, ans))
    return rows


# ------------------------------------------------------------------------------ tokenizer + ledger
def _train_tokenizer(docs: list[str], vocab_size: int):
    """Byte-level BPE trained on the background training text only (never on inserted items)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=None
    )


def train_tokenizer(docs: list[str], vocab_size: int):
    """The organism's byte-level BPE tokenizer trained on ``docs`` (what ``rotelab train`` uses
    for a model trained from scratch on the user's corpus)."""
    return _train_tokenizer(docs, vocab_size)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _ledger(items: list[dict], tokenizer, s: ProfileSettings) -> pd.DataFrame:
    """Tokenize each item once; cut prefix / sensitive span in token space."""
    rows = []
    for it in items:
        enc = tokenizer(it["text"], add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        if it["span_chars"] is None:
            start, end = s.passage_prefix, s.passage_prefix + s.passage_suffix
            if len(ids) < end:
                raise RuntimeError(f"passage {it['item_id']} has only {len(ids)} tokens")
        else:
            c0, c1 = it["span_chars"]
            start = next(i for i, (_, e) in enumerate(offsets) if e > c0)
            end = next((i for i, (b, _) in enumerate(offsets) if b >= c1), len(ids))
        if it["kind"] == Kind.secret.value and end - start != s.secret_len:
            raise RuntimeError(f"secret {it['item_id']}: a digit is not exactly one token")
        rows.append({
            "item_id": it["item_id"], "kind": it["kind"], "text": it["text"],
            "count": it["count"], "phase": it["phase"], "tokens": ids, "n_tokens": len(ids),
            "prefix_tokens": ids[:start], "suffix_tokens": ids[start:end],
            "span_start": start, "span_end": end, "secret": it["secret"],
            "secret_alphabet": SECRET_ALPHABET if it["secret"] else "",
            "secret_len": len(it["secret"]),
            "secret_format": (
                f"{s.secret_len} characters from secret_alphabet, each preceded by one space and "
                "each exactly one token; suffix_tokens are those tokens" if it["secret"] else ""
            ),
        })  # fmt: skip
    return pd.DataFrame(rows)


def write_world(spec: OrganismSpec, out: str | os.PathLike) -> Path:
    """Write corpus, tokenizer, ledger, probes and spec for ``spec`` into ``out`` (no training).

    Same spec, same bytes: this is what the determinism test compares.
    """
    out = Path(out)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    world = generate_world(spec)
    tokenizer = _train_tokenizer(world.train_docs, spec.settings.vocab_size)
    tokenizer.save_pretrained(out)
    for split, docs in (("train", world.train_docs), ("heldout", world.heldout_docs)):
        with open(out / "corpus" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"doc_id": f"{split}-{i:06d}", "text": d}) + "\n")
    _ledger(world.items, tokenizer, spec.settings).to_parquet(out / "ledger.parquet", index=False)
    pd.DataFrame(world.probes).to_parquet(out / "probes.parquet", index=False)
    pd.DataFrame(world.entities).to_parquet(out / "entities.parquet", index=False)
    if world.planted:  # inserted into pretraining by the build, like the ledger's items
        with open(out / "corpus" / "planted.jsonl", "w", encoding="utf-8") as f:
            for d in world.planted:
                f.write(json.dumps(d) + "\n")
    (out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    return out
