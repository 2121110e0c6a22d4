"""K-FAC factors of chosen linear layers: A = E[a aᵀ] over inputs, G = E[g gᵀ] over output
gradients.

The curvature that Merullo et al. 2025 ("From Memorization to Reasoning in the Spectrum of Loss
Curvature") use to find, and remove, the weight directions memorized data lives in. Per token
("expand" K-FAC, Martens & Grosse 2015; Eschenhagen et al. 2023), for a layer y = W a:

    A = (1/N) Σ_t a_t a_tᵀ        (in x in)
    G = (1/N) Σ_t g_t g_tᵀ        (out x out),  g_t = ∂L/∂y_t,  L = Σ_t CE(logits_t, label_t)

where N counts the non-padding tokens. Labels are sampled from the model's own softmax by default
(the true Fisher, as the paper uses) or taken from the data (the empirical Fisher, ``gold``).

How the collection stays cheap:

- No weight gradients: every parameter has ``requires_grad=False`` during collection, and the
  autograd graph starts at the outputs of the lowest target layers (they are made leaves), so no
  backward runs below them. G is summed in tensor hooks as the backward pass makes each gradient,
  so no gradient outlives its use.
- The LM head runs on the final hidden states a chunk of rows at a time (its logits, softmax,
  label draw and backward), so the (batch, seq, vocab) logits are never held: on SmolLM2 one
  8k-token sequence peaks at 12.9 GB instead of 17.2 GB. Batches default to about
  :data:`TOKENS_PER_PASS` tokens, which bounds the activations kept for the backward pass.
- Layers that read the same input tensor (``gate_proj``/``up_proj``) share one A, computed once.
- A is accumulated as each layer reads its input (its ``.input`` hook point, :meth:`LM.hooks`),
  so no input is kept beyond what autograd keeps anyway.
- Sums are fp32 whatever the model's dtype; padding is masked out of A and G. Each factor is a
  symmetric Gram matrix, so only its block upper triangle is multiplied (:func:`_add_gram_`).
  A bfloat16 model (``--dtype bfloat16``) multiplies in bfloat16 with fp32 accumulation (about
  twice the fp32 product speed on this AMX CPU); its factors are within about 1% of the fp32
  model's.
- Labels are sampled per sequence from a generator seeded by (seed, sequence index), so the factors
  do not depend on the batch size or on how ``torchrun`` shards the data; under ``torchrun`` the
  sums are all-reduced, giving the single-process result (up to float summation order).

Example:
    >>> kfac = KFAC(blocks=[2, 3]).fit(lm, sequences)  # doctest: +SKIP
    >>> A, G = kfac.factors_["model.layers.3.mlp.up_proj"]  # doctest: +SKIP
    >>> kfac.save("factors/")  # doctest: +SKIP

``rotelab kfac`` (inputs, the organism's text, the run directory) is
:mod:`rotelab.pipelines.kfac`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from rotelab.data.windows import stream_chunks
from rotelab.distributed import all_reduce_sum_, is_distributed, rank_world
from rotelab.errors import RotelabError
from rotelab.lm import (
    LM,
    LOGIT_BLOCK,
    HookFn,
    LinearLayer,
    block_index,
    length_buckets,
    pad_batch,
    progress_bar,
)

__all__ = [
    "DEFAULT_SEQ_LEN",
    "DEFAULT_TOKENS",
    "FACTORS_FILE",
    "KFAC",
    "Labels",
    "check_selection",
    "model_fingerprint",
    "packed_sequences",
    "parse_blocks",
    "select_layers",
    "TOKENS_PER_PASS",
]

#: File name of the factors inside a factors directory.
FACTORS_FILE = "factors.safetensors"
_FORMAT = "rotelab-kfac/1"


class Labels(str, Enum):
    """Where the labels of the loss come from."""

    sampled = "sampled"  # drawn from the model's softmax: the true Fisher
    gold = "gold"  # the next token of the data: the empirical Fisher


# ------------------------------------------------------------------------------ layer selection
def _read_blocks(blocks: str | Sequence[int]) -> tuple[set[int], int]:
    """The block indices a ``--blocks`` value names, and how many last blocks (``-k:``) it adds."""
    if not isinstance(blocks, str):
        return {int(b) for b in blocks}, 0
    text = blocks.strip()
    out: set[int] = set()
    try:
        if re.fullmatch(r"-\d+:", text):
            return out, int(text[1:-1])
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            else:
                out.add(int(part))
    except ValueError as exc:
        raise RotelabError(
            f"cannot read blocks {blocks!r}; write a range like 2-3, a list like 0,2, "
            "or -3: for the last three blocks"
        ) from exc
    return out, 0


def parse_blocks(blocks: str | Sequence[int] | None, num_layers: int) -> list[int] | None:
    """``"2-3"``, ``"0,2"``, ``"-3:"`` (the last three) or a list of ints → sorted block indices."""
    if blocks is None:
        return None
    explicit, last = _read_blocks(blocks)
    chosen = sorted(explicit | set(range(max(0, num_layers - last), num_layers)))
    bad = [b for b in chosen if not 0 <= b < num_layers]
    if bad or not chosen:
        raise RotelabError(f"blocks {blocks!r} are outside this model's blocks 0..{num_layers - 1}")
    return chosen


def check_selection(
    layers: str | Sequence[str] | None = None, blocks: str | Sequence[int] | None = None
) -> None:
    """Refuse what a layer selection gets wrong whatever the model: unreadable or empty
    ``blocks``, negative block indices, and layer patterns that can match no name (empty, or
    neither a glob nor a regex). :func:`select_layers` checks the rest on the model."""
    if blocks is not None:
        explicit, last = _read_blocks(blocks)
        if (not explicit and not last) or any(b < 0 for b in explicit):
            raise RotelabError(
                f"blocks {blocks!r} select no block (blocks count from 0); write a range like "
                "2-3, a list like 0,2, or -3: for the last three blocks"
            )
    for pattern in [layers] if isinstance(layers, str) else list(layers or ()):
        if not pattern.strip():
            raise RotelabError("a layer pattern is empty; give --layers a glob such as '*.mlp.*'")
        if not any(ch in pattern for ch in "*?["):  # a glob always means something; a regex may not
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RotelabError(
                    f"layer pattern {pattern!r} is neither a glob (*, ?, [...]) nor a regex "
                    f"({exc}); give --layers a glob such as '*.mlp.*'"
                ) from exc


def select_layers(
    lm: LM, layers: str | Sequence[str] | None = None, blocks: str | Sequence[int] | None = None
) -> list[LinearLayer]:
    """The target layers: all MLP projections by default, else by name pattern and/or block range.

    Args:
        lm: the model.
        layers: glob(s) or regex(es) over module names (``"*.mlp.up_proj"``); ``None`` = MLPs.
        blocks: block indices or a range string (see :func:`parse_blocks`).
    """
    wanted = parse_blocks(blocks, lm.num_layers)
    chosen = lm.mlp_layers() if layers is None else lm.linear_layers(layers)
    if not chosen:
        example = lm.mlp_layers()[:1] or lm.linear_layers()[:1]
        hint = f" (names look like {example[0].name})" if example else ""
        what = (
            "no MLP layers"
            if layers is None
            else f"layer pattern {layers!r} matches no linear layer"
        )
        raise RotelabError(f"{what} in this model{hint}; give --layers a glob such as '*.mlp.*'")
    if wanted is not None:
        chosen = [layer for layer in chosen if block_index(layer.name) in set(wanted)]
        if not chosen:
            raise RotelabError(
                f"layer pattern {layers!r} matches no linear layer in blocks {wanted}; "
                "widen --layers or --blocks"
            )
    return chosen


def model_fingerprint(lm: LM, layers: Sequence[LinearLayer]) -> dict[str, Any]:
    """What identifies the model factors belong to: layer names, (out, in) shapes, a weight hash.

    The hash is over the weights rounded to bfloat16, so the same model loaded in float32 or
    bfloat16 has the same fingerprint, while any trained or edited copy has another.
    """
    digest = hashlib.sha256()
    shapes = {}
    for layer in layers:
        w = layer.weight.detach()
        shapes[layer.name] = [int(w.shape[0]), int(w.shape[1])]
        digest.update(layer.name.encode())
        bits = w.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
        digest.update(bits.tobytes())
    return {"layers": shapes, "weights_sha256": digest.hexdigest()}


# ------------------------------------------------------------------------------ collection
#: Column blocks of the triangular product in :func:`_add_gram_`.
_GRAM_BLOCKS = 4


def _gram_edges(d: int) -> list[int]:
    """Column-block edges of a d x d Gram matrix (one block when d is small)."""
    k = _GRAM_BLOCKS if d >= 64 * _GRAM_BLOCKS else 1
    return [d * i // k for i in range(k + 1)]


def _add_gram_(acc: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """``acc += rowsᵀ rows`` on the block upper triangle only (a BLAS ``syrk`` in spirit).

    A Gram matrix is symmetric, so of the k x k column blocks only the k(k+1)/2 on and above the
    diagonal are computed: about 60% of the products for k = 4. :func:`_mirror_` fills the rest
    once, after the last batch. ``acc`` is fp32 (created when ``None``).

    fp32 rows are multiplied in fp32. bfloat16 rows (a bfloat16 model) are multiplied in bfloat16,
    where CPUs with AMX and GPUs are several times faster: the GEMM sums the batch's tokens in fp32
    and rounds each entry once (relative 2^-9) before it is added to the fp32 sum. Other dtypes
    (float16, whose range such sums overflow) are cast to fp32 first.
    """
    d = rows.shape[1]
    if acc is None:
        acc = torch.zeros(d, d, dtype=torch.float32, device=rows.device)
    if rows.dtype not in (torch.float32, torch.bfloat16):
        rows = rows.float()
    edges = _gram_edges(d)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if rows.dtype == torch.float32:
            acc[lo:hi, lo:].addmm_(rows[:, lo:hi].T, rows[:, lo:])
        else:
            acc[lo:hi, lo:].add_(rows[:, lo:hi].T @ rows[:, lo:])
    return acc


def _mirror_(acc: torch.Tensor) -> torch.Tensor:
    """Copy the block upper triangle :func:`_add_gram_` filled onto the lower one, in place."""
    edges = _gram_edges(acc.shape[0])
    for lo, hi in zip(edges[1:-1], edges[2:]):
        acc[lo:hi, :lo] = acc[:lo, lo:hi].T
    return acc


class _Collector:
    """Hooks that accumulate A and turn the lowest target outputs into autograd leaves.

    They sit on the layers' ``{name}.input`` and ``{name}.output`` hook points (:meth:`LM.hooks`);
    G is summed by tensor hooks on the outputs, which live only as long as the batch's graph.
    """

    def __init__(self, layers: Sequence[LinearLayer], device: torch.device) -> None:
        self.layers = list(layers)
        self.device = device
        self.a_sums: dict[str, torch.Tensor] = {}  # group leader name -> (in, in) fp32
        self.g_sums: dict[str, torch.Tensor] = {}  # layer name -> (out, out) fp32
        self.a_group: dict[str, str] = {}  # layer name -> group leader (shares its A)
        self.leaves: dict[str, torch.Tensor] = {}  # layer name -> output made an autograd leaf
        self.mask: torch.Tensor | None = None  # (B, T) bool, set per batch
        self.all_real = False
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}  # id(input) -> (input, leader)

    def begin_batch(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.all_real = bool(mask.all())  # no padding: rows are a view, no gather
        self.leaves = {}
        self._seen = {}

    def end_batch(self) -> None:
        self.leaves = {}
        self._seen = {}

    def hooks(self) -> dict[str, HookFn]:
        """Hook point -> function, for :meth:`LM.hooks`."""
        fns = {}
        for layer in self.layers:
            fns[f"{layer.name}.input"] = self._input_hook(layer.name)
            fns[f"{layer.name}.output"] = self._output_hook(layer.name)
        return fns

    def _input_hook(self, name: str):
        def fn(x: torch.Tensor) -> None:
            seen = self._seen.get(id(x))
            if seen is not None and seen[0] is x:
                leader = seen[1]
            else:
                leader = name
                self._seen[id(x)] = (x, name)
                self.a_sums[name] = _add_gram_(self.a_sums.get(name), self.rows(x.detach()))
            previous = self.a_group.setdefault(name, leader)
            if previous != leader:
                raise RuntimeError(f"layer {name} changed its input sharing between batches")

        return fn

    def _output_hook(self, name: str):
        def fn(output: torch.Tensor) -> torch.Tensor | None:
            if output.requires_grad:
                # G takes each gradient as the backward pass makes it, while it is fresh, and the
                # gradient is freed at once; asking autograd.grad for all of them and multiplying
                # at the end was 6-9% slower on the bench model (interleaved A/B).
                output.register_hook(self._g_hook(name))
                return None
            # Nothing below needs a gradient: the graph starts here.
            leaf = output.detach().requires_grad_(True)
            self.leaves[name] = leaf
            return leaf

        return fn

    def _g_hook(self, name: str):
        def fn(g: torch.Tensor) -> None:
            self._add_g(name, g)

        return fn

    def _add_g(self, name: str, g: torch.Tensor) -> None:
        """Add one batch's output gradients (B, T, out) of ``name`` to its G sum."""
        self.g_sums[name] = _add_gram_(self.g_sums.get(name), self.rows(g))

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (n, ...) rows of the non-padding positions, in order."""
        return t.flatten(0, 1) if self.all_real else t[self.mask]

    def accumulate_g(self, outputs: torch.Tensor, grad_outputs: torch.Tensor) -> None:
        """Run the backward pass from ``outputs`` down to the leaves; G is summed on the way."""
        names = list(self.leaves)
        grads = torch.autograd.grad(
            outputs, [self.leaves[n] for n in names], grad_outputs=grad_outputs, allow_unused=True
        )
        for name, g in zip(names, grads):
            if g is not None:  # None: the layer does not reach the loss
                self._add_g(name, g)


@contextlib.contextmanager
def _collecting(lm: LM, layers: Sequence[LinearLayer]) -> Iterator[_Collector]:
    """Install the K-FAC hooks and freeze all parameters; both undone in ``finally``."""
    collector = _Collector(layers, lm.device)
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with lm.hooks(collector.hooks()):
            yield collector
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _uniforms(seed: int, index: int, n: int) -> torch.Tensor:
    """The (n, 1) uniforms that draw the labels of sequence ``index``, seeded by (seed, index)."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
    return torch.rand(n, 1, generator=gen)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One label per row of ``probs`` (n, V): the inverse CDF at the (n, 1) uniforms ``u``.

    ``torch.multinomial`` draws an exponential per vocabulary entry, several times the cost. The
    running sums are taken about 1 MiB of rows at a time, which stays in cache (2.5x faster than
    one 16 MiB block on the bench model).
    """
    vocab = probs.shape[-1]
    step = max(1, (1 << 18) // vocab)
    u = u.to(probs.device)
    labels = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    for lo in range(0, probs.shape[0], step):
        cdf = probs[lo : lo + step].float().cumsum(-1)
        picked = torch.searchsorted(cdf, u[lo : lo + step] * cdf[:, -1:], right=True)
        labels[lo : lo + step] = picked.squeeze(1)
    return labels.clamp_(max=vocab - 1)


def _head_rows(vocab: int) -> int:
    """Rows of the LM head per chunk in :meth:`KFAC._grad_hidden`: one (rows x vocab) fp32 block
    of :data:`~rotelab.lm.LOGIT_BLOCK` entries, so the collection never holds the (batch, seq,
    vocab) logits of a long context.
    """
    return max(1, LOGIT_BLOCK // vocab)


def _as_sequences(data: Any) -> list[list[int]]:
    """Token id lists from sequences, :class:`~rotelab.data.Window` objects or ``Windows``."""
    seqs = []
    for item in data:
        tokens = getattr(item, "tokens", item)
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        seqs.append([int(t) for t in tokens])
    return seqs


def _within_budget(seqs: list[list[int]], max_tokens: int) -> list[list[int]]:
    """The leading sequences until they hold ``max_tokens`` predicted tokens (L - 1 each)."""
    out, total = [], 0
    for s in seqs:
        if total >= max_tokens:
            break
        out.append(s)
        total += len(s) - 1
    return out


class KFAC:
    """K-FAC factor collection, scikit-learn style: configure, then :meth:`fit`.

    Args:
        layers: glob(s)/regex(es) over module names; ``None`` = all MLP projections.
        blocks: restrict to these blocks (list of ints or ``"2-3"``, ``"0,2"``, ``"-3:"``).
        labels: ``sampled`` (true Fisher, default) or ``gold`` (empirical Fisher).
        seed: seeds the label sampling (per sequence, so batching does not change the result).

    Attributes (after :meth:`fit` or :meth:`load`):
        factors_: layer name → (A (in, in), G (out, out)) fp32 tensors; layers reading the same
            input hold the same A tensor.
        a_groups_: layer name → name of the layer whose A it shares (itself if none).
        tokens_: number of tokens the factors average over.
        fingerprint_: :func:`model_fingerprint` of the model the factors were collected on.
        kinds_: layer name → ``"linear"`` or ``"conv1d"``.
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        *,
        blocks: str | Sequence[int] | None = None,
        labels: Labels | str = Labels.sampled,
        seed: int = 0,
    ) -> None:
        self.layers = layers
        self.blocks = blocks
        try:
            self.labels = Labels(labels)
        except ValueError as exc:
            raise RotelabError(f"labels must be sampled or gold, not {labels!r}") from exc
        self.seed = seed

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        lm: LM,
        data: Iterable,
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> KFAC:
        """Accumulate A and G over ``data``.

        Args:
            lm: the model (any dtype; sums are fp32).
            data: token id sequences, or windows (their prefix + suffix tokens). Each sequence of
                length L contributes L - 1 tokens: positions 0..L-2, each predicting the next one.
            batch_size: sequences per forward/backward pass (padded on the right, masked);
                ``None``: as many as hold about :data:`TOKENS_PER_PASS` tokens.
            max_tokens: stop adding sequences once this many tokens are covered (``None``: all).
            progress: show a progress bar.
        """
        if batch_size is not None and batch_size < 1:
            raise RotelabError("batch size must be >= 1")
        targets = select_layers(lm, self.layers, self.blocks)
        seqs = _as_sequences(data)
        ctx = lm.context_length
        # A sequence longer than the context is cut: the factors describe the model in context.
        seqs = [s[: ctx + 1] for s in seqs if len(s) >= 2]
        if max_tokens is not None:
            seqs = _within_budget(seqs, max_tokens)
        if not seqs:
            raise RotelabError("no sequence of at least 2 tokens to collect K-FAC factors on")
        if batch_size is None:
            batch_size = max(1, TOKENS_PER_PASS // max(len(s) - 1 for s in seqs))
        self.batch_size_ = batch_size
        # Under torchrun each process takes every world-th sequence; the sums are all-reduced.
        rank, world = rank_world() if is_distributed() else (0, 1)
        mine = list(range(rank, len(seqs), world))

        was_training = lm.model.training
        lm.model.eval()  # no dropout: the Fisher of the deterministic model
        n_tokens = torch.zeros((), dtype=torch.float64, device=lm.device)
        try:
            bar = progress_bar(progress, len(mine), "K-FAC factors")
            with _collecting(lm, targets) as col, bar as advance:
                for batch in length_buckets([len(seqs[i]) - 1 for i in mine], batch_size):
                    indices = [mine[i] for i in batch]
                    n_tokens += self._step(lm, col, seqs, indices)
                    advance(len(indices))
        finally:
            lm.model.train(was_training)

        for tensor in (*col.a_sums.values(), *col.g_sums.values()):
            _mirror_(tensor)
        for tensor in (*col.a_sums.values(), *col.g_sums.values(), n_tokens):
            all_reduce_sum_(tensor)
        n = float(n_tokens.item())
        factors = {}
        for layer in targets:
            a = col.a_sums[col.a_group[layer.name]]
            g = col.g_sums.get(layer.name)
            if g is None:
                g = torch.zeros(layer.out_features, layer.out_features, device=lm.device)
            factors[layer.name] = (a, g)
        for tensor in {id(t): t for pair in factors.values() for t in pair}.values():
            tensor.div_(n)
        self.a_groups_ = {layer.name: col.a_group[layer.name] for layer in targets}
        self.factors_ = {k: (a.cpu(), g.cpu()) for k, (a, g) in factors.items()}
        self._reshare()  # .cpu() copies each GPU tensor separately
        self.tokens_ = int(n)
        self.kinds_ = {layer.name: layer.kind for layer in targets}
        self.fingerprint_ = model_fingerprint(lm, targets)
        return self

    def _step(self, lm: LM, col: _Collector, seqs: list[list[int]], indices: list[int]) -> int:
        inputs = [seqs[i][:-1] for i in indices]
        ids, attention = pad_batch(inputs, lm.pad_id, device=lm.device)
        mask = attention.bool()
        gold, _ = pad_batch([seqs[i][1:] for i in indices], 0)
        col.begin_batch(mask)
        try:
            with torch.enable_grad():
                hidden = lm.final_hidden(ids, attention)  # (B, T, D); A is summed on the way
                if hidden.requires_grad:  # else no target layer reaches the loss: A only
                    rows = col.rows(hidden)  # (N, D), the non-padding positions in order
                    if self.labels is Labels.gold:
                        draws = col.rows(gold.to(lm.device))
                    else:  # one uniform per position, from the sequence's own generator
                        draws = torch.cat(
                            [_uniforms(self.seed, i, len(s)) for i, s in zip(indices, inputs)]
                        )
                    col.accumulate_g(rows, self._grad_hidden(lm, rows, draws))
        finally:
            col.end_batch()
        return int(mask.sum().item())

    def _grad_hidden(self, lm: LM, rows: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """d/d(rows) of Σ CE(logits, label) through the LM head, a chunk of rows at a time.

        ``draws`` holds the gold labels (N,) or, for sampled labels, the uniforms (N, 1) that pick
        them from each row's softmax. The gradient of CE at the logits is softmax - onehot; the
        head's backward turns it into the hidden states' gradient, so no chunk's logits outlive it.
        """
        grad = torch.empty_like(rows)
        step = _head_rows(lm.vocab_size)
        for lo in range(0, rows.shape[0], step):
            h = rows[lo : lo + step].detach().requires_grad_(True)
            logits = lm.head_logits(h)  # (n, V) fp32
            probs = torch.softmax(logits.detach(), dim=-1)
            chunk = draws[lo : lo + step]
            labels = chunk if self.labels is Labels.gold else _draw(probs, chunk)
            probs.scatter_add_(-1, labels[:, None], torch.full_like(probs[:, :1], -1.0))
            (grad[lo : lo + step],) = torch.autograd.grad(logits, h, grad_outputs=probs)
        return grad

    def _reshare(self) -> None:
        """Make layers that share an input hold the very same A tensor object."""
        groups = getattr(self, "a_groups_", None)
        if not groups:
            return
        self.factors_ = {
            name: (self.factors_[groups[name]][0], g) for name, (_, g) in self.factors_.items()
        }

    # ------------------------------------------------------------------ checks
    @property
    def layer_names(self) -> list[str]:
        self._check_fitted()
        return list(self.factors_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "factors_"):
            raise RotelabError("K-FAC factors are not collected yet; call fit() or KFAC.load()")

    def check_model(self, lm: LM) -> list[LinearLayer]:
        """Refuse a model other than the one the factors were collected on; return its layers."""
        self._check_fitted()
        by_name = {layer.name: layer for layer in lm.linear_layers()}
        source = getattr(self, "source_", None) or "these factors"
        missing = [n for n in self.factors_ if n not in by_name]
        if missing:
            raise RotelabError(
                f"{source} come from a different model: it has no layer {missing[0]}; "
                "collect factors for this model with `rotelab kfac --model ...`"
            )
        layers = [by_name[n] for n in self.factors_]
        for layer in layers:
            want = self.fingerprint_["layers"][layer.name]
            if [layer.out_features, layer.in_features] != list(want):
                raise RotelabError(
                    f"{source} come from a different model: {layer.name} is "
                    f"{layer.out_features}x{layer.in_features} here but {want[0]}x{want[1]} there; "
                    "collect factors for this model with `rotelab kfac --model ...`"
                )
        if model_fingerprint(lm, layers)["weights_sha256"] != self.fingerprint_["weights_sha256"]:
            raise RotelabError(
                f"{source} come from a different model (the weights differ); "
                "collect factors for this model with `rotelab kfac --model ...`"
            )
        return layers

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the factors as safetensors (a directory gets ``factors.safetensors``)."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FACTORS_FILE
        tensors = {}
        for name, (a, g) in self.factors_.items():
            leader = self.a_groups_[name]
            tensors.setdefault(f"A:{leader}", a.contiguous())
            tensors[f"G:{name}"] = g.contiguous()
        meta = {
            "format": _FORMAT,
            "labels": self.labels.value,
            "seed": self.seed,
            "tokens": self.tokens_,
            "a_groups": self.a_groups_,
            "kinds": self.kinds_,
            "fingerprint": self.fingerprint_,
            "layers_arg": self.layers,
            "blocks_arg": self.blocks,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"rotelab_kfac": json.dumps(meta)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> KFAC:
        """Read factors written by :meth:`save` (a file or a directory holding one)."""
        from safetensors import safe_open

        path = Path(path)
        file = path / FACTORS_FILE if path.is_dir() else path
        if not file.is_file():
            raise RotelabError(
                f"no K-FAC factors at {path} (expected {FACTORS_FILE}); "
                "collect them with `rotelab kfac`"
            )
        try:
            with safe_open(str(file), framework="pt") as f:
                meta_raw = (f.metadata() or {}).get("rotelab_kfac")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise RotelabError(f"{file} is not a readable safetensors file ({exc})") from exc
        if meta_raw is None:
            raise RotelabError(f"{file} holds no rotelab K-FAC factors (no metadata)")
        meta = json.loads(meta_raw)
        kfac = cls(meta.get("layers_arg"), blocks=meta.get("blocks_arg"), labels=meta["labels"],
                   seed=meta["seed"])  # fmt: skip
        kfac.a_groups_ = meta["a_groups"]
        kfac.factors_ = {
            name: (tensors[f"A:{leader}"], tensors[f"G:{name}"])
            for name, leader in kfac.a_groups_.items()
        }
        kfac.tokens_ = int(meta["tokens"])
        kfac.kinds_ = meta["kinds"]
        kfac.fingerprint_ = meta["fingerprint"]
        kfac.source_ = f"factors from {path}"
        return kfac

    def __repr__(self) -> str:
        fitted = (
            f", {len(self.factors_)} layers, {self.tokens_} tokens"
            if hasattr(self, "factors_")
            else ""
        )
        labels = self.labels.value
        return f"KFAC(layers={self.layers!r}, blocks={self.blocks!r}, labels={labels}{fitted})"


# ------------------------------------------------------------------------------ factor data
#: Tokens of factor data by default (the paper uses ~20M on a 7B model; the organism has ~180k).
DEFAULT_TOKENS = 131_072
#: Tokens per forward/backward pass when no batch size is given: 16 sequences of 128 were the
#: fastest on the bench model, and a fixed token count bounds memory on long-context models
#: (SmolLM2 keeps about 1.5 MB of activations per token for the backward pass).
TOKENS_PER_PASS = 2048
#: Longest default sequence: a model's whole context (8k tokens for SmolLM2) would make one
#: sequence outgrow a pass, and attention cost grows with its length.
DEFAULT_SEQ_LEN = 2048


def packed_sequences(
    lm: LM, texts: Iterable[str], *, seq_len: int | None = None, max_tokens: int
) -> list[list[int]]:
    """Documents joined by end-of-text and cut into ``seq_len + 1``-token sequences.

    Each sequence gives ``seq_len`` K-FAC tokens (its last token is only a label); packing is how
    the organism was trained, so the factors see text as the model saw it. ``seq_len=None`` is
    the model's context - 1, at most :data:`DEFAULT_SEQ_LEN`.
    """
    if seq_len is None:
        seq_len = min(lm.context_length - 1, DEFAULT_SEQ_LEN)
    if seq_len < 1:
        raise RotelabError(f"--seq-len must be >= 1, got {seq_len}")
    if seq_len >= lm.context_length:
        raise RotelabError(
            f"sequence length {seq_len} needs {seq_len + 1} tokens but the model's context is "
            f"{lm.context_length}; use --seq-len {lm.context_length - 1} or less"
        )
    # Just enough text for the sequences the budget needs; each gives seq_len tokens.
    chunks = stream_chunks(
        texts,
        lm.encode,
        lm.tokenizer.eos_token_id,
        max_tokens=-(-max_tokens // seq_len) * (seq_len + 1),
        length=seq_len + 1,
    )
    return _within_budget(chunks, max_tokens)
