"""Self-contrastive steering: logits = l_u + gamma * p_mem * (l_s - l_u), scoring and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, pad_batch
from rotelab.steered import SteeringMode, SteeringSpec, model_fingerprint


def _seqs(n: int, length: int, seed: int, vocab: int = 96) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g).tolist()


def _spec(lm: LM, mode, *, bias: float = 0.3, zero_probe: bool = False, gamma: float = 1.0):
    d = lm.config.hidden_size
    g = torch.Generator().manual_seed(7)
    w = torch.randn(d, generator=g)
    v = torch.randn(d, generator=g)
    return SteeringSpec(
        base_model="base", layer=1, alpha=5.0, mode=mode,
        probe_weight=torch.zeros(d) if zero_probe else 0.3 * w, probe_bias=bias,
        vector=v / v.norm(), fingerprint=model_fingerprint(lm.model), gamma=gamma,
    )  # fmt: skip


def _logits(lm: LM, seqs, spec: SteeringSpec | None = None) -> torch.Tensor:
    ids, mask = pad_batch(seqs, lm.pad_id, device=lm.device)
    with lm.steered(spec), torch.inference_mode():
        return lm.model(input_ids=ids, attention_mask=mask).logits.float()


def test_zero_gate_gives_the_base_logits(tiny_lm):
    """p_mem = 0 (a probe that never fires): the unsteered half alone, i.e. the base model."""
    spec = _spec(tiny_lm, SteeringMode.contrastive, bias=-1e4, zero_probe=True, gamma=3.0)
    seqs = _seqs(3, 9, 0)
    base = _logits(tiny_lm, seqs)
    got = _logits(tiny_lm, seqs, spec)
    # the unsteered half runs in a batch twice as large: equal up to the matmul's rounding
    torch.testing.assert_close(got, base, rtol=0, atol=1e-5)
    static = _logits(tiny_lm, seqs, spec.with_(mode=SteeringMode.static))
    assert (static - base).abs().max() > 1e-2  # while the steered half does differ


@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_matches_the_formula_from_two_passes(tiny_lm, gamma):
    """A probe that varies per token, and a fixed one: both equal the formula by hand."""
    seqs = _seqs(3, 11, 1)
    for zero_probe, bias in ((False, 0.3), (True, 0.8)):
        spec = _spec(tiny_lm, SteeringMode.contrastive, bias=bias, zero_probe=zero_probe,
                     gamma=gamma)  # fmt: skip
        l_u = _logits(tiny_lm, seqs)
        l_s = _logits(tiny_lm, seqs, spec.with_(mode=SteeringMode.static))
        h = torch.as_tensor(np.stack(tiny_lm.hidden_states(seqs, [1], pool="none")[1]))
        p_mem = spec.p_mem(h)[..., None]  # from the unsteered state at the layer
        want = l_u + gamma * p_mem * (l_s - l_u)
        got = _logits(tiny_lm, seqs, spec)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        if zero_probe:  # fixed p_mem = sigmoid(bias)
            torch.testing.assert_close(p_mem, torch.full_like(p_mem, 1 / (1 + np.exp(-bias))))
        assert (got - l_u).abs().max() > 1e-2


def test_scoring_decoding_and_loading_agree(tiny_llama_dir, tiny_lm, tmp_path):
    """Saved and loaded, the contrastive model scores what its logits say, decodes greedily by
    them (through the KV cache), and scores continuations like full sequences."""
    spec = _spec(tiny_lm, SteeringMode.contrastive, gamma=2.0)
    spec.base_model = str(tiny_llama_dir)
    spec.save(tmp_path / "c")
    lm = LM.load(tmp_path / "c", dtype="float32")
    assert lm.steering.mode is SteeringMode.contrastive and lm.steering.gamma == 2.0
    seqs = _seqs(2, 10, 2)
    logits = _logits(tiny_lm, seqs, spec)
    logp = torch.log_softmax(logits, -1)
    scores = lm.score(seqs)
    for row, (seq, sc) in enumerate(zip(seqs, scores)):
        want = logp[row, torch.arange(len(seq) - 1), torch.tensor(seq[1:])]
        np.testing.assert_allclose(sc.logprobs, want.numpy(), rtol=1e-4, atol=1e-4)
    # greedy decoding with a cache: each step is the argmax of the full-sequence logits
    prompts = [s[:5] for s in seqs]
    out = lm.generate(prompts, 4)
    full = [p + list(o) for p, o in zip(prompts, out)]
    again = _logits(tiny_lm, full, spec)
    for row, (p, o) in enumerate(zip(prompts, out)):
        picks = again[row, len(p) - 1 : len(p) + 3].argmax(-1).tolist()
        assert picks == list(o)
    conts = np.array(_seqs(4, 3, 5))
    got = lm.score_continuations(seqs[0][:4], conts)
    want = np.stack(
        [s.logprobs for s in lm.score([seqs[0][:4] + list(c) for c in conts], targets_from=4)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_single_hook_and_bad_specs_are_refused(tiny_lm, tmp_path):
    spec = _spec(tiny_lm, SteeringMode.contrastive)
    with pytest.raises(RotelabError, match="install"):
        spec.hook()
    with pytest.raises(RotelabError, match="gamma"):
        spec.with_(gamma=float("nan"))
