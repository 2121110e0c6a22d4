"""rotelab.phonetic.melody_organism: lyric spellings, dealing lines to counts, the statistics
against hand-made tables, and a tiny model that does memorize melodies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from rotelab.errors import RotelabError
from rotelab.phonetic import AptSearch
from rotelab.phonetic.melody import note_edit_similarity, parse_melody
from rotelab.phonetic.melody_organism import (
    MELODY_PRESETS,
    background_pairs,
    lyric_tokens,
    melody_items,
    melody_prompts,
    melody_recovery,
    melody_tokenizer,
    summarize_recovery,
    train_melody_model,
)
from rotelab.pipelines.melody import default_pairs


def test_lyric_spellings():
    assert lyric_tokens("Mom's spaghetti", "phonemes") == [
        "M", "AA1", "M", "Z", "_", "S", "P", "AH0", "G", "EH1", "T", "IY0",
    ]  # fmt: skip
    assert lyric_tokens("Mom's  spaghetti!", "letters") == list("mom's_spaghetti")
    with pytest.raises(RotelabError, match="encoding"):
        lyric_tokens("a line", "graphemes")
    for enc in ("phonemes", "letters"):
        tok = melody_tokenizer(enc)
        toks = lyric_tokens("Twinkle, twinkle, little star", enc) + ["<sep>", "C4", "d4"]
        ids = tok.convert_tokens_to_ids(toks)
        assert tok.unk_token_id not in ids and tok.convert_ids_to_tokens(ids) == toks


def test_lines_are_dealt_to_counts_and_the_rest_is_unrelated():
    pairs = default_pairs()
    items, rest = melody_items(pairs, counts=(0, 4, 64), per_count=5, seed=1)
    assert items.groupby("count").size().to_dict() == {0: 5, 4: 5, 64: 5}
    assert len(rest) == len(pairs) - 15 and not set(rest) & set(items["line"])
    again, _ = melody_items(pairs, counts=(0, 4, 64), per_count=5, seed=1)
    assert again.equals(items)
    assert not melody_items(pairs, counts=(0, 4, 64), per_count=5, seed=2)[0].equals(items)
    with pytest.raises(RotelabError, match="per-count"):
        melody_items(pairs[:10], counts=(0, 4), per_count=5)
    bg = background_pairs([p[0] for p in pairs], 30, exclude=[p[0] for p in pairs],
                          max_syllables=10, seed=0)  # fmt: skip
    assert len(bg) == 30 and all(len(n) <= 10 for _, n in bg)
    assert not {b for b, _ in bg} & {p[0] for p in pairs}


def _frame(diff: float) -> pd.DataFrame:
    """Two seeds x 10 lines at one count: apt beats control by ``diff`` on every line."""
    rows = []
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        for item in range(10):
            base = rng.uniform(0.1, 0.5)
            for cond, d, val in (("original", 0, 1.0), ("apt", 0, base + diff),
                                 ("control", 0, base - 0.1), ("control", 1, base + 0.1),
                                 ("unrelated", 0, base)):  # fmt: skip
                rows.append({"seed": seed, "item": item, "count": 64, "condition": cond,
                             "draw": d, "edit": val, "dtw": val, "exact": val == 1.0,
                             "logp": -val})  # fmt: skip
    return pd.DataFrame(rows)


def test_summary_follows_the_table():
    (row,) = summarize_recovery(_frame(0.2), n_boot=300)
    assert row["lines"] == 20 and row["seeds"] == 2
    # controls are averaged per line first: control mean = base, so apt - control = 0.2 exactly
    assert row["apt_minus_control_edit"] == pytest.approx(0.2)
    assert row["apt_minus_control_edit_ci"] == pytest.approx([0.2, 0.2])
    assert row["apt_minus_unrelated_dtw"] == pytest.approx(0.2)
    assert row["apt_minus_control_logp"] == pytest.approx(-0.2)
    assert row["original_exact"] == 1.0 and row["apt_exact"] == 0.0
    (flat,) = summarize_recovery(_frame(0.0), n_boot=300)
    assert flat["apt_minus_control_edit_ci"] == pytest.approx([0.0, 0.0], abs=1e-12)


@pytest.mark.slow
def test_a_tiny_model_sings_memorized_melodies_back():
    """Memorized at 64x (the four short first lines), a line's own lyric brings back its melody
    far better than an unrelated line, and its APT variant better than same-syllable controls;
    the table holds what the model generated, scored as documented."""
    pairs = default_pairs(seed=0)
    items = pd.DataFrame([{"line": ln, "notes": n, "count": 64} for ln, n in pairs[:4]])
    bg = background_pairs([p[0] for p in pairs], 20, exclude=[p[0] for p in pairs],
                          max_syllables=7, seed=0)  # fmt: skip
    config = dataclasses.replace(MELODY_PRESETS["micro"], steps=120, context=64)
    lm, log = train_melody_model(items, bg, config=config, seed=0)
    assert log[-1]["loss"] < log[0]["loss"]
    prompts = melody_prompts(items, [p[0] for p in pairs[10:20]], AptSearch(), controls=2)
    out = melody_recovery(lm, items, prompts)
    mean = out.groupby("condition")[["edit", "logp"]].mean()
    assert mean.loc["original", "edit"] > mean.loc["unrelated", "edit"] + 0.3
    assert mean.loc["apt", "edit"] > mean.loc["control", "edit"]
    assert mean.loc["apt", "logp"] > mean.loc["control", "logp"]
    for row in out.itertuples():
        generated = parse_melody(row.generated) if row.generated else ()
        target = items["notes"].iloc[row.item]
        assert row.edit == pytest.approx(note_edit_similarity(generated, target))
        assert row.exact == (generated == target)
