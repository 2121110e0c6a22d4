"""A lyric -> melody organism: does a model that memorized a song's melody sing it back when
prompted with sound-alike lyrics? (Roh et al. 2025, "Bob's Confetti: Phonetic Memorization
Attacks in Music and Video Generation", made measurable on a model trained here.)

The paper prompts lyrics-to-song models with APT variants of famous lyrics and hears the original
melody come back. Here a small Llama-style model is trained from scratch on lyric -> melody pairs
(``<eos> lyric <sep> melody <eos>``, melodies in the note tokens of
:mod:`rotelab.phonetic.melody`): background pairs (synthetic lyric lines with random
syllable-aligned melodies, each a different song) and memorized pairs (verse lines with their
melody) inserted a controlled number of times (0, 1, 4, 16, 64) with the organism's Hubble-style
machinery (:func:`rotelab.train.insertion_schedule`, :func:`rotelab.train.packed_batches`,
:func:`rotelab.train.train`).

**The lyric side is what the model hears.** ``phonemes`` (the default) spells a lyric as its
ARPAbet phonemes with stress, words separated by ``_``: the grapheme-to-phoneme front end
lyrics-to-song systems put before their acoustic model. ``letters`` spells it as lower-case
letters (``_`` between words): a text-conditioned model. Which one a generator uses decides what
an APT prompt shares with the original, so both can be measured.

Each memorized line is then prompted, greedy, under four conditions (as
:mod:`rotelab.phonetic.recall` does for next lines):

- ``original``: the line itself (memorization at best);
- ``apt``: its best APT variant (:class:`~rotelab.phonetic.search.AptSearch`);
- ``control``: every content word replaced by a random dictionary word of the same syllable count
  (:func:`~rotelab.phonetic.recall.control_variant`: meter kept, sound not), several draws;
- ``unrelated``: a verse line that was never inserted (the floor).

The generated melody is compared with the memorized one by note edit similarity and pitch DTW
similarity (:mod:`rotelab.phonetic.melody`); ``exact`` says it is note for note the memorized
melody; ``logp`` is the memorized melody's mean log-probability per token after the prompt (one
teacher-forced pass). :func:`summarize_recovery` gives, per insertion count, each condition's means
and the paired differences ``apt - control`` and ``apt - unrelated`` with bootstrap CIs that
resample lines within each training seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.phonetic.dictionary import pronounce, pronounce_word, tokenize
from rotelab.phonetic.melody import (
    MELODY_TOKENS,
    Note,
    format_melody,
    melody_tokens,
    note_edit_similarity,
    notes_from_tokens,
    pitch_dtw_similarity,
    syllable_melody,
)
from rotelab.phonetic.recall import control_variant
from rotelab.phonetic.search import AptSearch, content_words
from rotelab.phonetic.verses import synthetic_lines
from rotelab.train.scratch import ScratchConfig, train_with_insertions

__all__ = [
    "CONDITIONS",
    "COUNTS",
    "ENCODINGS",
    "MELODY_PRESETS",
    "METRICS",
    "MelodyConfig",
    "background_pairs",
    "can_encode",
    "lyric_tokens",
    "melody_experiment",
    "melody_items",
    "melody_prompts",
    "melody_recovery",
    "melody_tokenizer",
    "summarize_recovery",
    "train_melody_model",
]

CONDITIONS = ("original", "apt", "control", "unrelated")
COUNTS = (0, 1, 4, 16, 64)
ENCODINGS = ("phonemes", "letters")
EOS, PAD, SEP, UNK, WORD = "<eos>", "<pad>", "<sep>", "<unk>", "_"
_PHONEMES = sorted(
    {f"{v}{s}" for v in "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split() for s in "012"}
    | set("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
)
_LETTERS = [*"abcdefghijklmnopqrstuvwxyz", "'"]


class MelodyConfig(ScratchConfig):
    """Model shape and training budget of the lyric -> melody model."""


#: ``tiny``: the tiny organism's shape and budget (2 layers, hidden 128, 480 steps of 16 rows;
#: about a minute per seed on one core); ``micro``: a third of the budget, for a quick look.
#: One layer does not learn the lyric -> melody lookup in these budgets; two do.
MELODY_PRESETS = {
    "micro": MelodyConfig(intermediate=256, batch_size=16, steps=150),
    "tiny": MelodyConfig(),
}


# ------------------------------------------------------------------------------ tokens
def can_encode(line: str, encoding: str) -> bool:
    """Whether ``line`` has words and (for ``phonemes``) every word is in the dictionary."""
    words = tokenize(line)
    if encoding == "phonemes":
        return bool(words) and all(pronounce_word(w) is not None for w in words)
    return bool(words)


def lyric_tokens(line: str, encoding: str) -> list[str]:
    """The model's tokens of a lyric line (see the module docstring).

    Raises:
        RotelabError: an unknown encoding, or (``phonemes``) a word not in the dictionary.
    """
    if encoding == "phonemes":
        p = pronounce(line, strict=True)
        out: list[str] = []
        for k, word in enumerate(p.arpabet):
            out += ([WORD] if k else []) + list(word)
        return out
    if encoding == "letters":
        text = " ".join(tokenize(line))
        return [WORD if c == " " else c for c in text if c in _LETTERS or c == " "]
    raise RotelabError(f"unknown lyric encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def melody_tokenizer(encoding: str):
    """A word-level tokenizer over the lyric symbols of ``encoding``, the melody tokens and the
    special tokens (``<eos>`` doubles as beginning of sequence, as in the organism)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = _PHONEMES if encoding == "phonemes" else _LETTERS
    vocab = {t: i for i, t in enumerate([EOS, PAD, SEP, UNK, WORD, *symbols, *MELODY_TOKENS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def _prefix(tokenizer, line: str, encoding: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids([EOS, *lyric_tokens(line, encoding), SEP])


def _pair_ids(tokenizer, line: str, notes: Sequence[Note], encoding: str) -> list[int]:
    return _prefix(tokenizer, line, encoding) + tokenizer.convert_tokens_to_ids(
        [*melody_tokens(notes), EOS]
    )


# ------------------------------------------------------------------------------ data
def background_pairs(
    source: Sequence[str],
    n: int,
    *,
    exclude: Sequence[str] = (),
    max_syllables: int | None = None,
    seed: int = 0,
) -> list[tuple[str, tuple[Note, ...]]]:
    """``n`` background pairs: synthetic lines (:func:`~rotelab.phonetic.verses.synthetic_lines`
    over ``source``, every word in the dictionary, none equal to an ``exclude`` line) with their
    own random syllable-aligned melodies (each a different song: the model learns the format
    and that melodies follow syllables, not any one melody)."""
    banned = {" ".join(tokenize(x)) for x in exclude}
    out: list[tuple[str, tuple[Note, ...]]] = []
    draw = 0
    while len(out) < n:
        for line in synthetic_lines(source, 2 * (n - len(out)) + 8, seed=seed * 7919 + draw):
            if len(out) == n:
                break
            if line in banned or not can_encode(line, "phonemes"):
                continue
            n_syll = pronounce(line).syllables
            if max_syllables is not None and n_syll > max_syllables:
                continue
            out.append((line, syllable_melody(line, n_syll, seed=seed + 1)))
        draw += 1
        if draw > 50:
            raise RotelabError("the source lines give too few dictionary-only synthetic lines")
    return out


def train_melody_model(
    items: pd.DataFrame,
    background: Sequence[tuple[str, Sequence[Note]]],
    *,
    encoding: str = "phonemes",
    config: MelodyConfig = MELODY_PRESETS["tiny"],
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
) -> tuple[LM, list[dict]]:
    """Train a fresh model on ``background`` with each item inserted ``count`` times.

    Args:
        items: one row per memorized pair: ``line``, ``notes`` (a tuple of
            :class:`~rotelab.phonetic.melody.Note`) and ``count``.
        background: (line, notes) pairs, each in the stream once per epoch.
        encoding: how lyrics are spelled (``phonemes`` or ``letters``).
        config: model shape and training budget.
        seed: seeds the model, the schedule and the batches.
        callback: receives the trainer's log records.

    Returns:
        The trained model as an :class:`~rotelab.lm.LM` (eval mode) and its training log.

    Raises:
        RotelabError: a pair longer than the context, or insertions that do not fit the run.
    """
    tokenizer = melody_tokenizer(encoding)
    seqs = [_pair_ids(tokenizer, ln, n, encoding) for ln, n in zip(items["line"], items["notes"])]
    docs = [_pair_ids(tokenizer, ln, n, encoding)[1:] for ln, n in background]  # eos: the joiner
    longest = max(map(len, [*seqs, *docs]))
    if longest > config.context:
        raise RotelabError(
            f"a lyric/melody pair is {longest} tokens, over the context of {config.context}; "
            "give shorter lines or melodies"
        )
    model, log = train_with_insertions(
        tokenizer, docs, seqs, items["count"].tolist(), config, seed=seed, callback=callback
    )
    return LM.from_model(model, tokenizer, name=f"melody-{encoding}-seed{seed}"), log


# ------------------------------------------------------------------------------ prompts
def melody_prompts(
    items: pd.DataFrame,
    unrelated: Sequence[str],
    search: AptSearch,
    *,
    encoding: str = "phonemes",
    controls: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """The prompts of every item under each condition (see the module docstring).

    Items whose line the search cannot vary (a word not in the dictionary, no content word, no
    candidate) get no prompts. Returns one row per prompt: ``item``, ``count``, ``condition``,
    ``draw`` (the control's draw), ``prompt``.

    Raises:
        RotelabError: no unrelated line, or no item could be varied.
    """
    pool = [x for x in unrelated if can_encode(x, encoding)]
    if not pool:
        raise RotelabError("the melody experiment needs unrelated lines it can spell")
    rng = random.Random(seed)
    rows = []
    for k, (line, count) in enumerate(zip(items["line"], items["count"])):
        if not content_words(tokenize(line)) or not can_encode(line, "phonemes"):
            continue
        apt = search.candidates(line, top=1)
        if not apt:
            continue
        prompts = [("original", 0, line), ("apt", 0, apt[0].text),
                   *[("control", d, control_variant(line, search, rng)) for d in range(controls)],
                   ("unrelated", 0, rng.choice(pool))]  # fmt: skip
        rows += [{"item": k, "count": int(count), "condition": c, "draw": d, "prompt": p}
                 for c, d, p in prompts]  # fmt: skip
    if not rows:
        raise RotelabError("no memorized line could be varied; give lines of dictionary words")
    return pd.DataFrame(rows)


def melody_recovery(
    lm: LM,
    items: pd.DataFrame,
    prompts: pd.DataFrame,
    *,
    encoding: str = "phonemes",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Greedy melodies for every prompt, scored against the item's memorized melody.

    Adds ``generated`` (file spelling), ``edit`` and ``dtw`` similarities, ``exact`` and
    ``logp`` (the memorized melody's mean log-probability per token after the prompt) to
    ``prompts``.
    """
    tok = lm.tokenizer
    targets = [list(items["notes"].iloc[i]) for i in prompts["item"]]
    prefixes = [_prefix(tok, p, encoding) for p in prompts["prompt"]]
    target_ids = [tok.convert_tokens_to_ids(melody_tokens(t)) for t in targets]
    scored = lm.score([p + t for p, t in zip(prefixes, target_ids)],
                      targets_from=[len(p) for p in prefixes], batch_size=batch_size)  # fmt: skip
    longest = max(len(t) for t in target_ids)
    budgets = [max(min(longest + 2, lm.context_length - len(p)), 1) for p in prefixes]
    new = lm.generate(prefixes, budgets, batch_size=batch_size, ragged=True)
    gen = [notes_from_tokens(tok.convert_ids_to_tokens(ids)) for ids in new]
    out = prompts.copy()
    out["generated"] = [format_melody(g) for g in gen]
    out["edit"] = [note_edit_similarity(g, t) for g, t in zip(gen, targets)]
    out["dtw"] = [pitch_dtw_similarity(g, t) for g, t in zip(gen, targets)]
    out["exact"] = [tuple(g) == tuple(t) for g, t in zip(gen, targets)]
    out["logp"] = [float(np.mean(s.logprobs)) for s in scored]
    return out


# ------------------------------------------------------------------------------ statistics
METRICS = ("edit", "dtw", "exact", "logp")


def summarize_recovery(frame: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per insertion count: each condition's mean of every metric, and the paired differences
    ``apt - control`` and ``apt - unrelated`` (and ``original - unrelated``) of every metric with
    95% bootstrap CIs. ``frame`` holds :func:`melody_recovery`'s rows of one or
    more training seeds (column ``seed``); a line's controls are averaged first, and the bootstrap
    resamples lines within each seed (the seeds are fixed strata)."""
    frame = frame.assign(exact=frame["exact"].astype(float))
    rng = np.random.default_rng(seed)
    out = []
    for count, sub in frame.groupby("count", sort=True):
        per = sub.groupby(["seed", "item", "condition"])[list(METRICS)].mean().unstack("condition")
        row: dict = {"count": int(count), "lines": int(len(per)),
                     "seeds": int(sub["seed"].nunique())}  # fmt: skip
        for cond in CONDITIONS:
            for m in METRICS:
                row[f"{cond}_{m}"] = float(per[(m, cond)].mean())
        strata = [np.flatnonzero(per.index.get_level_values("seed") == s)
                  for s in sorted(sub["seed"].unique())]  # fmt: skip
        boot = np.concatenate(
            [s[rng.integers(0, len(s), size=(n_boot, len(s)))] for s in strata], axis=1
        )  # (n_boot, lines): every resample keeps each seed's number of lines
        for a, b in (("apt", "control"), ("apt", "unrelated"), ("original", "unrelated")):
            for m in METRICS:
                d = (per[(m, a)] - per[(m, b)]).to_numpy()
                means = d[boot].mean(axis=1)
                lo, hi = np.percentile(means, [2.5, 97.5])
                row[f"{a}_minus_{b}_{m}"] = float(d.mean())
                row[f"{a}_minus_{b}_{m}_ci"] = [float(lo), float(hi)]
        out.append(row)
    return out


# ------------------------------------------------------------------------------ the experiment
def melody_items(
    pairs: Sequence[tuple[str, Sequence[Note]]],
    *,
    counts: Sequence[int] = COUNTS,
    per_count: int = 12,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Deal the (line, melody) pairs, shuffled by ``seed``, ``per_count`` to each insertion
    count; the lines left over are the unrelated prompts.

    Raises:
        RotelabError: too few pairs to give every count its lines and leave an unrelated one.
    """
    need = len(counts) * per_count + 1
    if len(pairs) < need:
        raise RotelabError(
            f"{len(pairs)} lyric/melody pairs; {len(counts)} counts x {per_count} lines plus one "
            f"unrelated line need {need} (lower --per-count)"
        )
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    rows = [
        {"line": pairs[i][0], "notes": tuple(pairs[i][1]), "count": int(c)}
        for k, c in enumerate(counts)
        for i in order[k * per_count : (k + 1) * per_count]
    ]
    rest = [pairs[i][0] for i in order[len(counts) * per_count :]]
    return pd.DataFrame(rows), rest


def melody_experiment(
    pairs: Sequence[tuple[str, Sequence[Note]]],
    *,
    encoding: str = "phonemes",
    counts: Sequence[int] = COUNTS,
    per_count: int = 12,
    seeds: Sequence[int] = (0, 1, 2),
    config: MelodyConfig = MELODY_PRESETS["tiny"],
    background: int = 300,
    controls: int = 3,
    search: AptSearch | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Train one model per seed and measure melody recovery under every condition.

    Per seed: the pairs are dealt to the counts (:func:`melody_items`), ``background`` synthetic
    pairs are drawn over all the lines, a model is trained (:func:`train_melody_model`) and
    prompted (:func:`melody_prompts`, :func:`melody_recovery`).

    Returns:
        The prompts of every seed with their scores (column ``seed``), the items of every seed
        (``seed``, ``item``, ``line``, ``melody``, ``count``) and one training record per seed
        (its final loss, steps and seconds).
    """
    search = AptSearch() if search is None else search
    lines = [p[0] for p in pairs]
    longest = max(pronounce(x).syllables for x in lines if can_encode(x, "phonemes"))
    frames, item_frames, records = [], [], []
    for s in seeds:
        items, unrelated = melody_items(pairs, counts=counts, per_count=per_count, seed=s)
        bg = background_pairs(lines, background, exclude=lines, max_syllables=longest, seed=s)
        log_cb = None if callback is None else (lambda rec, s=s: callback(s, rec))
        lm, log = train_melody_model(items, bg, encoding=encoding, config=config, seed=s,
                                     callback=log_cb)  # fmt: skip
        prompts = melody_prompts(items, unrelated, search, encoding=encoding,
                                 controls=controls, seed=s)  # fmt: skip
        frames.append(melody_recovery(lm, items, prompts, encoding=encoding).assign(seed=s))
        item_frames.append(pd.DataFrame({
            "seed": s, "item": range(len(items)), "line": items["line"],
            "melody": [format_melody(n) for n in items["notes"]], "count": items["count"],
        }))  # fmt: skip
        last = log[-1]
        records.append({"seed": s, "final_loss": last["loss"], "steps": config.steps,
                        "seconds": last["elapsed_s"], "precision": last["precision"]})  # fmt: skip
    return pd.concat(frames, ignore_index=True), pd.concat(item_frames, ignore_index=True), records
