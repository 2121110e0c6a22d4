"""K-FAC factors against a dense float64 per-token reference; selection, persistence, refusals."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model, make_tokenizer

from rotelab.curvature import KFAC, check_selection, packed_sequences, parse_blocks, select_layers
from rotelab.curvature import kfac as kfac_module
from rotelab.curvature.kfac import _draw, _uniforms
from rotelab.errors import RotelabError
from rotelab.lm import LM

LENGTHS = (9, 17, 5, 12, 2)  # unequal: batches are padded, and padding must be masked


@functools.cache
def _tokenizer():
    return make_tokenizer()


def _lm(arch: str, seed: int = 0) -> LM:
    return LM.from_model(make_tiny_model(arch, seed=seed), _tokenizer(), name=arch)


def _seqs(seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 96, (n,), generator=gen).tolist() for n in LENGTHS]


def _reference(lm: LM, seqs, names, labels: str, seed: int = 0):
    """Dense float64 factors: one unpadded sequence at a time, plain autograd, a loop over
    tokens."""
    model = copy.deepcopy(lm.model).double()
    modules = dict(model.named_modules())
    a_sum = {n: 0.0 for n in names}
    g_sum = {n: 0.0 for n in names}
    n_tokens = 0
    for index, s in enumerate(seqs):
        ids = torch.tensor([s[:-1]])
        if labels == "gold":
            target = torch.tensor(s[1:])
        else:  # the same draws rotelab makes: from the float32 model's softmax, same seed
            with torch.no_grad():
                probs = torch.softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
            target = _draw(probs, _uniforms(seed, index, probs.shape[0]))
        store = {}

        def keep(name, store=store):
            def fn(module, args, output):
                output.retain_grad()
                store[name] = (args[0], output)

            return fn

        handles = [modules[n].register_forward_hook(keep(n)) for n in names]
        try:
            logits = model(input_ids=ids).logits[0]
            torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
        finally:
            for h in handles:
                h.remove()
        for n in names:
            a, y = store[n]
            for t in range(ids.shape[1]):
                a_sum[n] = a_sum[n] + torch.outer(a[0, t], a[0, t])
                g_sum[n] = g_sum[n] + torch.outer(y.grad[0, t], y.grad[0, t])
        n_tokens += ids.shape[1]
    return {n: (a_sum[n] / n_tokens, g_sum[n] / n_tokens) for n in names}, n_tokens


def _close(x: torch.Tensor, ref: torch.Tensor) -> bool:
    return torch.allclose(x.double(), ref, rtol=1e-4, atol=1e-6 * float(ref.detach().abs().max()))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])  # nn.Linear, Conv1D, Linear
@pytest.mark.parametrize("labels", ["gold", "sampled"])
def test_factors_equal_dense_float64_reference(arch, labels):
    lm = _lm(arch)
    seqs = _seqs()
    kfac = KFAC(labels=labels, seed=3).fit(lm, seqs, batch_size=3)
    ref, n = _reference(lm, seqs, list(kfac.factors_), labels, seed=3)
    assert kfac.tokens_ == n == sum(LENGTHS) - len(LENGTHS)
    assert set(kfac.factors_) == {layer.name for layer in lm.mlp_layers()}
    for name, (a, g) in kfac.factors_.items():
        assert a.dtype == g.dtype == torch.float32
        assert _close(a, ref[name][0]), name
        assert _close(g, ref[name][1]), name
    if arch == "gpt2":
        assert set(kfac.kinds_.values()) == {"conv1d"}


@pytest.mark.parametrize("labels", ["gold", "sampled"])
def test_head_runs_in_row_chunks_and_the_full_logits_are_never_made(monkeypatch, labels):
    """4 head rows at a time (chunks cross sequence edges): still the float64 reference."""
    monkeypatch.setattr(kfac_module, "_head_rows", lambda vocab: 4)
    lm, seqs = _lm("gpt2"), _seqs()
    calls = []
    handle = lm.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(a))
    try:
        kfac = KFAC(labels=labels, seed=3).fit(lm, seqs, batch_size=3)
    finally:
        handle.remove()
    assert calls == []  # the model's own head, which makes (batch, seq, vocab) logits, never ran
    ref, _ = _reference(lm, seqs, list(kfac.factors_), labels, seed=3)
    for name, (a, g) in kfac.factors_.items():
        assert _close(a, ref[name][0]), name
        assert _close(g, ref[name][1]), name


def test_default_batch_holds_about_tokens_per_pass(monkeypatch):
    monkeypatch.setattr(kfac_module, "TOKENS_PER_PASS", 33)
    kfac = KFAC().fit(_lm("llama"), _seqs())  # the longest sequence gives 16 positions
    assert kfac.batch_size_ == 2
    assert KFAC().fit(_lm("llama"), _seqs(), batch_size=5).batch_size_ == 5


def test_default_sequence_length_is_capped(monkeypatch):
    texts = ["the quick brown fox jumps over the lazy dog " * 40]
    lm = _lm("llama")  # context 64
    assert {len(s) for s in packed_sequences(lm, texts, max_tokens=200)} == {64}
    monkeypatch.setattr(kfac_module, "DEFAULT_SEQ_LEN", 10)
    assert {len(s) for s in packed_sequences(lm, texts, max_tokens=200)} == {11}
    assert {len(s) for s in packed_sequences(lm, texts, seq_len=20, max_tokens=200)} == {21}
    with pytest.raises(RotelabError, match="--seq-len must be >= 1"):
        packed_sequences(lm, texts, seq_len=0, max_tokens=200)  # 0 is not "the default"
    with pytest.raises(RotelabError, match="context is 64; use --seq-len 63 or less"):
        packed_sequences(lm, texts, seq_len=64, max_tokens=200)


def test_padding_is_masked_and_batching_does_not_matter():
    lm = _lm("llama")
    one = KFAC(seed=1).fit(lm, _seqs(), batch_size=1)  # no padding at all
    padded = KFAC(seed=1).fit(lm, _seqs(), batch_size=5)  # every batch padded
    for name in one.factors_:
        for x, y in zip(one.factors_[name], padded.factors_[name]):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)


def test_gate_and_up_share_one_input_factor():
    lm = _lm("llama")
    kfac = KFAC().fit(lm, _seqs())
    gate, up = "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"
    assert kfac.factors_[gate][0] is kfac.factors_[up][0]
    assert kfac.a_groups_[up] == gate
    down = "model.layers.1.mlp.down_proj"
    assert kfac.a_groups_[down] == down
    assert kfac.factors_[down][0].shape == (64, 64)


def test_no_weight_gradients_and_backward_stops_at_lowest_target():
    lm = _lm("llama")
    flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    seen = {}

    def record(name):
        def fn(module, args, output):
            seen[name] = (
                output[0].requires_grad if isinstance(output, tuple) else output.requires_grad
            )

        return fn

    blocks = lm.model.model.layers
    handles = [blocks[i].register_forward_hook(record(i)) for i in range(2)]
    try:
        KFAC(blocks="1").fit(lm, _seqs())
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: False, 1: True}  # no graph below block 1's MLP
    assert all(p.grad is None for p in lm.model.parameters())
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == flags
    assert not any(m._forward_hooks for m in lm.model.modules())


def test_layer_selection_by_pattern_and_blocks():
    lm = _lm("llama")
    names = [layer.name for layer in select_layers(lm, "*up_proj", "1")]
    assert names == ["model.layers.1.mlp.up_proj"]
    assert len(select_layers(lm, None, [0])) == 3
    assert parse_blocks("0-1", 2) == [0, 1]
    assert parse_blocks("-1:", 2) == [1]
    assert parse_blocks("1,0", 2) == [0, 1]
    kfac = KFAC("*down_proj").fit(lm, _seqs())
    assert list(kfac.factors_) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize(
    "layers, blocks, message",
    [("*nothing_here*", None, "matches no linear layer"), (None, "5", "outside"),
     (None, "a-b", "cannot read blocks")],
)  # fmt: skip
def test_bad_selection_is_a_one_line_error(layers, blocks, message):
    with pytest.raises(RotelabError, match=message):
        KFAC(layers, blocks=blocks).fit(_lm("llama"), _seqs())


@pytest.mark.parametrize(
    "layers, blocks, message",
    [(None, "a-b", "cannot read blocks"), (None, "-0:", "select no block"),
     (None, "3-1", "select no block"), (None, [0, -1], "select no block"),
     ("(", None, "neither a glob"), (["*up_proj", " "], None, "pattern is empty")],
)  # fmt: skip
def test_selection_syntax_is_checked_without_a_model(layers, blocks, message):
    with pytest.raises(RotelabError, match=message):
        check_selection(layers, blocks)


def test_selections_a_model_may_have_pass_the_syntax_check():
    for layers, blocks in [("*up_proj", "2-3"), (r"mlp\.(up|down)", "-3:"), (["a", "b[0]"], "0,7"),
                           (None, [0, 5]), ("*.mlp.*", None)]:  # fmt: skip
        check_selection(layers, blocks)
    with pytest.raises(RotelabError, match="outside"):  # the model decides what exists
        select_layers(_lm("llama"), "*up_proj", "2-3")


def test_bad_labels_and_empty_data():
    with pytest.raises(RotelabError, match="sampled or gold"):
        KFAC(labels="true")
    with pytest.raises(RotelabError, match="at least 2 tokens"):
        KFAC().fit(_lm("llama"), [[5]])


def test_save_load_roundtrip_and_model_check(tmp_path):
    lm = _lm("gpt2")
    kfac = KFAC(labels="gold").fit(lm, _seqs())
    path = kfac.save(tmp_path / "f")
    assert path.name == "factors.safetensors"
    back = KFAC.load(tmp_path / "f")
    assert back.tokens_ == kfac.tokens_ and back.labels.value == "gold"
    for name, (a, g) in kfac.factors_.items():
        assert torch.equal(back.factors_[name][0], a) and torch.equal(back.factors_[name][1], g)
    assert back.check_model(lm)  # same model: accepted
    with pytest.raises(RotelabError, match="different model .*weights differ"):
        back.check_model(_lm("gpt2", seed=1))
    with pytest.raises(RotelabError, match="different model"):
        back.check_model(_lm("llama"))
    with pytest.raises(RotelabError, match="no K-FAC factors"):
        KFAC.load(tmp_path / "missing")


def test_fingerprint_ignores_dtype():
    lm = _lm("llama")
    kfac = KFAC().fit(lm, _seqs())
    bf16 = LM.from_model(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer)
    kfac.check_model(bf16)  # same weights in another dtype are the same model
    again = KFAC().fit(bf16, _seqs())  # and a bf16 model still gets fp32 sums
    assert all(a.dtype == torch.float32 for a, _ in again.factors_.values())


_TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from tiny_models import make_tiny_model, make_tokenizer
    from rotelab.curvature import KFAC
    from rotelab.distributed import dist_context, is_main
    from rotelab.lm import LM
    torch.set_num_threads(1)
    lm = LM.from_model(make_tiny_model("llama"), make_tokenizer())
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 96, (n,), generator=gen).tolist() for n in {lengths!r}]
    with dist_context() as (rank, world):
        assert world == 2
        kfac = KFAC(seed=2).fit(lm, seqs, batch_size=2)
        if is_main():
            kfac.save({out!r})
    """
)


@pytest.mark.slow
def test_torchrun_all_reduce_equals_one_process(tmp_path):
    tests = str(Path(__file__).resolve().parents[1])
    lengths = [9, 17, 5, 12, 2, 7, 11]
    script = tmp_path / "run.py"
    script.write_text(
        _TORCHRUN_SCRIPT.format(tests=tests, lengths=lengths, out=str(tmp_path / "f"))
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    multi = KFAC.load(tmp_path / "f")
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 96, (n,), generator=gen).tolist() for n in lengths]
    single = KFAC(seed=2).fit(_lm("llama"), seqs, batch_size=2)
    assert multi.tokens_ == single.tokens_
    for name in single.factors_:
        for x, y in zip(multi.factors_[name], single.factors_[name]):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)


def test_gram_upper_blocks_then_mirror_equal_the_full_product():
    from rotelab.curvature.kfac import _add_gram_, _mirror_

    gen = torch.Generator().manual_seed(3)
    acc = None
    full = torch.zeros(600, 600, dtype=torch.float64)
    for _ in range(3):  # 600 columns: the blocked path (4 column blocks of 150)
        rows = torch.randn(257, 600, generator=gen)
        acc = _add_gram_(acc, rows)
        full += rows.double().T @ rows.double()
    assert not torch.allclose(acc.double(), full, rtol=1e-4)  # lower blocks still empty
    _mirror_(acc)
    torch.testing.assert_close(acc.double(), full, rtol=1e-5, atol=1e-3)
    assert torch.equal(acc, acc.T)


def test_sampled_labels_follow_the_softmax():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]]).expand(20_000, 4)
    labels = _draw(probs, _uniforms(0, 5, len(probs)))
    freq = torch.bincount(labels, minlength=4).double() / len(labels)
    torch.testing.assert_close(freq, probs[0].double(), atol=0.015, rtol=0)
    assert torch.equal(labels, _draw(probs, _uniforms(0, 5, len(probs))))  # seeded
    assert not torch.equal(labels, _draw(probs, _uniforms(0, 6, len(probs))))


def test_bfloat16_model_factors_are_close_to_float32():
    lm = _lm("llama")
    lm16 = LM.from_model(copy.deepcopy(lm.model).to(torch.bfloat16), _tokenizer(), name="llama")
    seqs = _seqs()
    ref = KFAC(labels="gold").fit(lm, seqs, batch_size=3).factors_
    got = KFAC(labels="gold").fit(lm16, seqs, batch_size=3).factors_
    for name, (a, g) in ref.items():
        assert got[name][0].dtype == torch.float32
        for ours, theirs in zip(got[name], (a, g)):
            assert float((ours - theirs).norm() / theirs.norm()) < 3e-2, name
