"""Does a language model recall a memorized next line from a sound-alike prompt? (Roh et al.
2025's question, "Bob's Confetti", asked of a text model.)

The paper prompts lyrics-to-song models with APT variants of famous lyrics and hears the
original melody come back. Here the memorized continuation is the next line of a famous verse:
each verse line is a prompt, under four conditions, and the model continues it.

- ``original``: the line itself (what memorization gives at best);
- ``apt``: its best APT variant (:class:`~rotelab.phonetic.search.AptSearch`);
- ``control``: every content word replaced by a random dictionary word of the same syllable
  count (:func:`control_variant`; not chosen for sound, so meter is kept and sound is not);
  several seeds per line;
- ``unrelated``: a line of another verse (the floor).

Three measurements per prompt, all from one teacher-forced pass over prompt, newline and the
true next line (:meth:`rotelab.lm.LM.score`, batched; no decoding, so a 135M model scores the
shipped verses in minutes on a CPU):

- ``logp``: the true next line's mean log-probability per token;
- ``match``: the share of its tokens that are the model's greedy (argmax) choice given the true
  tokens before them;
- ``recalled``: every one of them is, i.e. greedy decoding after the prompt and the newline
  reproduces the next line token for token (exactly what decoding would show, at the cost of
  one pass; a near miss counts as not recalled).

The APT effect is the paired difference ``apt - control`` over lines, with a bootstrap CI.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.phonetic.dictionary import pronounce
from rotelab.phonetic.search import FUNCTION_WORDS, AptSearch, diverges
from rotelab.phonetic.verses import Verse
from rotelab.stats import rate_with_ci

__all__ = [
    "CONDITIONS",
    "RecallResult",
    "control_variant",
    "measure_recall",
    "next_line_recall",
    "recall_prompts",
    "verse_pairs",
]

CONDITIONS = ("original", "apt", "control", "unrelated")


def verse_pairs(verses: Sequence[Verse]) -> list[tuple[int, str, str]]:
    """(verse index, line, next line) for consecutive lines of each verse (repeats dropped)."""
    out, seen = [], set()
    for v, verse in enumerate(verses):
        for a, b in zip(verse.lines, verse.lines[1:]):
            if (a, b) not in seen:
                seen.add((a, b))
                out.append((v, a, b))
    return out


def control_variant(line: str, search: AptSearch, rng: random.Random) -> str:
    """``line`` with each content word replaced by a random vocabulary word of the same syllable
    count that diverges from the line's content words (function words kept)."""
    words = pronounce(line, strict=True).words
    content = [w for w in words if w not in FUNCTION_WORDS]
    by_syll = search.index.by_syllables
    out = []
    for w in words:
        if w in FUNCTION_WORDS:
            out.append(w)
            continue
        pool = by_syll.get(pronounce((w,)).syllables, [])
        out.append(_draw(pool, search, content, rng, w))
    return " ".join(out)


def _draw(
    pool: list[int], search: AptSearch, content: list[str], rng: random.Random, w: str
) -> str:
    """A random word of ``pool`` that diverges from ``content`` (rejection sampling, then the
    whole pool filtered when the draws keep failing)."""
    for _ in range(100 if pool else 0):
        c = search.index.words[pool[rng.randrange(len(pool))]]
        if diverges(c, content):
            return c
    ok = [search.index.words[i] for i in pool if diverges(search.index.words[i], content)]
    if not ok:
        raise RotelabError(f"the vocabulary has no word to stand in for {w!r} in a control")
    return ok[rng.randrange(len(ok))]


@dataclass
class RecallResult:
    """Per prompt: its condition, text, ``logp`` and ``recalled``; and the summary."""

    prompts: pd.DataFrame
    summary: dict


def recall_prompts(
    verses: Sequence[Verse], search: AptSearch, *, controls: int = 3, seed: int = 0
) -> pd.DataFrame:
    """Every prompt of :func:`next_line_recall` (no model involved): per line pair the original
    line, its APT variant, ``controls`` controls and an unrelated line; columns ``pair``,
    ``verse``, ``line``, ``next``, ``condition``, ``seed`` (the control's draw), ``prompt``.

    Raises:
        RotelabError: fewer than two verses, or no line the search can vary.
    """
    if len(verses) < 2:
        raise RotelabError("next-line recall needs at least two verses (for unrelated prompts)")
    rng = random.Random(seed)
    rows = []
    for pid, (v, line, nxt) in enumerate(verse_pairs(verses)):
        try:
            apt = search.candidates(line, top=1)
        except RotelabError:  # an unknown word: the line cannot be varied
            continue
        if not apt:
            continue
        others = [x for u, verse in enumerate(verses) if u != v for x in verse.lines]
        prompts = [("original", 0, line), ("apt", 0, apt[0].text),
                   *[("control", k, control_variant(line, search, rng)) for k in range(controls)],
                   ("unrelated", 0, rng.choice(others))]  # fmt: skip
        for cond, k, text in prompts:
            rows.append({"pair": pid, "verse": verses[v].title, "line": line, "next": nxt,
                         "condition": cond, "seed": k, "prompt": text})  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise RotelabError("no verse line could be varied; give verses in dictionary words")
    return frame


def next_line_recall(
    lm: LM,
    verses: Sequence[Verse],
    search: AptSearch,
    *,
    controls: int = 3,
    seed: int = 0,
    n_boot: int = 2000,
    batch_size: int = 16,
) -> RecallResult:
    """Prompt ``lm`` with each verse line under every condition and measure next-line recall.

    Args:
        lm: the model.
        verses: the verses (at least two, for the unrelated prompts).
        search: the APT search (and the control's vocabulary).
        controls: random same-syllable controls per line.
        seed: seeds the controls, the unrelated lines and the bootstrap.
        n_boot: bootstrap resamples of lines for the paired differences.
        batch_size: prompts per forward pass.
    """
    frame = recall_prompts(verses, search, controls=controls, seed=seed)
    frame["logp"], frame["match"], frame["recalled"] = measure_recall(lm, frame, batch_size)
    return RecallResult(frame, _summarize(frame, seed, n_boot))


def measure_recall(
    lm: LM, frame: pd.DataFrame, batch_size: int = 16
) -> tuple[list[float], list[float], list[bool]]:
    """Per prompt, from one pass: the true next line's mean log p per token, its share of argmax
    matches, and whether all its tokens are argmax matches (greedy reproduces it)."""
    prefixes = [lm.encode(p + "\n", add_bos=True) for p in frame["prompt"]]
    targets = [lm.encode(n) for n in frame["next"]]
    scored = lm.score([p + t for p, t in zip(prefixes, targets)],
                      targets_from=[len(p) for p in prefixes], batch_size=batch_size)  # fmt: skip
    logp = [float(np.mean(s.logprobs)) for s in scored]
    match = [float(np.mean(s.argmax_match)) for s in scored]
    return logp, match, [bool(s.argmax_match.all()) for s in scored]


def _summarize(frame: pd.DataFrame, seed: int, n_boot: int) -> dict:
    out: dict = {"pairs": int(frame["pair"].nunique())}
    for cond in CONDITIONS:
        sub = frame[frame["condition"] == cond]
        out[cond] = {**rate_with_ci(sub["recalled"].tolist()).as_dict("recall", "recalled", "n"),
                     "logp": float(sub["logp"].mean()),
                     "match": float(sub["match"].mean())}  # fmt: skip
    per = frame.groupby(["pair", "condition"])[["recalled", "match", "logp"]].mean()
    per = per.unstack("condition")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per), size=(n_boot, len(per)))
    for other in ("control", "unrelated"):
        for metric in ("recalled", "match", "logp"):
            d = (per[(metric, "apt")] - per[(metric, other)]).to_numpy()
            boots = d[idx].mean(axis=1)
            out[f"apt_minus_{other}_{metric}"] = {
                "mean": float(d.mean()),
                "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            }
    return out
