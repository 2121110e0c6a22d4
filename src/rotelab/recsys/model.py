"""VISTA (Chen et al. 2025, "Massive Memorization with Hundreds of Trillions of Parameters for
Sequential Transducer Generative Recommenders", Meta) and its baselines, in PyTorch.

Stage 1 (:class:`QuasiLinearSummarizer`): ``k`` learnable seed tokens read a user's history with
quasi-linear attention, ``O = φ(Q)·φ(φ(K)ᵀV)`` with ``φ = SiLU`` (the kernel as PAPERS.md gives
it). ``φ(K)ᵀV`` is a sum over history items, so a history of any length is folded into a fixed
(heads, d_h, d_h) state chunk by chunk, and the state (with its item count) can be extended when
the history grows: that is what makes the summary cacheable and incrementally refreshable.

Where the notes are silent we chose, and say so:

- normalisation: the state is the *mean* ``(1/n) Σ φ(k_i) v_iᵀ`` rather than a sum, so the
  summary's scale does not drift with history length (a model trained on 1k items is applied at
  100k); linear attention's usual ``φ(Q)·Σφ(K)`` denominator is unusable with SiLU, which can be
  negative. The outer ``φ`` is applied to this mean state, literally as the formula reads.
- items are layer-normed before the key/value projection (without it the mean state of small
  embeddings fell below the output LayerNorm's epsilon and every user got the same summary).
- summary tokens: ``seeds + W_o · LayerNorm(O)`` (a residual to the seeds, so an empty history
  yields the seed prior: the documented fallback for an empty history).
- reconstruction loss: the paper trains the summary to reconstruct the history; we use a sampled
  form, a small target-attention head over the summary tokens that tells items of the history
  from random items (binary cross-entropy), weighted by ``recon_weight`` = 1 (one seed on a
  small world, 1,200 users: AUC on long-term users at 20x the training length 0.62 / 0.60 / 0.64
  / 0.60 for weights 0 / 0.1 / 1 / 3: noisy, no weight clearly best; 1 treats reconstruction as
  the main objective the paper makes it).

Stage 2 (:class:`TargetAttention`): a candidate attends to a memory of tokens (softmax attention,
DIN's pooled-interest features ``[p, c, p⊙c]`` into an MLP). The same head serves the three
models, which differ only in their memory: VISTA's summary tokens (``k`` of them, whatever the
history length), the whole history (:class:`FullAttention`, DIN-style), or its last ``N`` items
(:class:`LastN`).

Items are embedded as ``E_item[i] + E_cat[category(i)]`` (DIN uses item and category embeddings).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FullAttention",
    "LastN",
    "ModelConfig",
    "QuasiLinearSummarizer",
    "TargetAttention",
    "Vista",
    "build_model",
    "model_version",
]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of every model. ``kind`` is ``vista``, ``full`` or ``lastn``."""

    kind: str
    n_items: int
    n_categories: int = 1
    dim: int = 32
    heads: int = 4
    seeds: int = 16  # VISTA's k summary tokens (the paper's best: 128 tokens of 256)
    last_n: int = 64
    recon_weight: float = 1.0  # the paper trains reconstruction as a main objective, not a tweak
    recon_samples: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class ItemEmbedding(nn.Module):
    """``E_item[i] + E_cat[category(i)]``; id 0 (padding) embeds to zero."""

    def __init__(self, n_items: int, n_categories: int, dim: int, categories: torch.Tensor):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.cat = nn.Embedding(n_categories + 1, dim, padding_idx=0)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.normal_(self.cat.weight, std=0.1)
        with torch.no_grad():
            self.item.weight[0].zero_()
            self.cat.weight[0].zero_()
        self.register_buffer("categories", categories.long(), persistent=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item(ids) + self.cat(self.categories[ids])  # (..., D)


class TargetAttention(nn.Module):
    """Candidates attend to a memory: logits (B, C) from candidates (B, C, D), memory (B, M, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(
        self, cand: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        d = cand.shape[-1]
        q = self.q(cand)  # (B, C, D)
        k, v = self.kv(memory).chunk(2, dim=-1)  # (B, M, D) each
        att = q @ k.transpose(1, 2) / math.sqrt(d)  # (B, C, M)
        if mask is not None:
            att = att.masked_fill(~mask[:, None, :], float("-inf"))
        # a row with nothing to attend to (an empty history) pools to zero instead of NaN
        w = torch.nan_to_num(att.softmax(dim=-1), nan=0.0)
        pooled = w @ v  # (B, C, D)
        return self.mlp(torch.cat([pooled, cand, pooled * cand], dim=-1)).squeeze(-1)  # (B, C)


class QuasiLinearSummarizer(nn.Module):
    """Stage 1: ``k`` seed tokens read a history with ``O = φ(Q)·φ(φ(K)ᵀV)``, ``φ = SiLU``.

    :meth:`state` folds items into the running (sum, count); :meth:`summarize` turns a state into
    (B, k, D) summary tokens. Folding chunk by chunk equals folding the whole history at once.
    """

    def __init__(self, dim: int, heads: int, seeds: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.dh = heads, dim // heads
        self.seeds = nn.Parameter(torch.randn(seeds, dim))
        # pre-norm of the items: without it the mean state of ~0.1-scale embeddings is ~1e-4 and
        # the output LayerNorm's epsilon flattens every user to the same summary (measured)
        self.norm_in = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def state(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of ``φ(k_i) v_iᵀ`` over the unmasked items (B, H, dh, dh), and their count (B,).

        Args:
            x: (B, L, D) embedded items; mask: (B, L) True where an item is present.
        """
        b, n, _ = x.shape
        k, v = self.kv(self.norm_in(x)).chunk(2, dim=-1)  # (B, L, D) each
        k = F.silu(k).view(b, n, self.heads, self.dh) * mask[:, :, None, None]  # (B, L, H, dh)
        v = v.view(b, n, self.heads, self.dh)  # (B, L, H, dh)
        s = torch.einsum("blhi,blhj->bhij", k, v)  # (B, H, dh, dh)
        return s, mask.sum(dim=1).to(x.dtype)

    def summarize(self, s: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(B, k, D) summary tokens from a state ``s`` (B, H, dh, dh) of ``count`` (B,) items."""
        b = s.shape[0]
        mean = s / count.clamp(min=1)[:, None, None, None]  # (B, H, dh, dh)
        q = F.silu(self.q(self.seeds)).view(-1, self.heads, self.dh)  # (k, H, dh)
        o = torch.einsum("khi,bhij->bkhj", q, F.silu(mean))  # (B, k, H, dh)
        o = o.reshape(b, -1, self.heads * self.dh)  # (B, k, D)
        return self.seeds + self.out(self.norm(o))  # (B, k, D)


class Vista(nn.Module):
    """VISTA: stage-1 summary (cacheable), stage-2 target attention over the summary only."""

    def __init__(self, cfg: ModelConfig, categories: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = ItemEmbedding(cfg.n_items, cfg.n_categories, cfg.dim, categories)
        self.stage1 = QuasiLinearSummarizer(cfg.dim, cfg.heads, cfg.seeds)
        self.stage2 = TargetAttention(cfg.dim)
        self.recon = TargetAttention(cfg.dim)

    def fold(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage-1 state (sum, count) of histories (B, L) (0 = padding)."""
        return self.stage1.state(self.embed(hist), hist > 0)

    def fold_stream(self, chunks: Iterable[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The state of one history given in chunks (1-D item arrays): memory O(chunk)."""
        s = torch.zeros(1, self.cfg.heads, self.stage1.dh, self.stage1.dh)
        n = torch.zeros(1)
        for chunk in chunks:
            ids = torch.as_tensor(np.asarray(chunk), dtype=torch.long)[None]  # (1, chunk)
            ds, dn = self.fold(ids)
            s, n = s + ds, n + dn
        return s, n

    def summary(self, hist: torch.Tensor) -> torch.Tensor:
        """(B, k, D) summary tokens of histories (B, L)."""
        return self.stage1.summarize(*self.fold(hist))

    def score_summary(self, summary: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Stage 2: logits (B, C) of candidates (B, C) from cached summaries (B, k, D)."""
        return self.stage2(self.embed(cand), summary)

    def forward(self, hist: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.score_summary(self.summary(hist), cand)

    def train_forward(
        self, hist: torch.Tensor, cand: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, C) and the sampled reconstruction loss (one summary serves both): the
        summary must tell ``recon_samples`` items of the history from as many random items."""
        summary = self.summary(hist)  # (B, k, D)
        b, n = hist.shape
        m = self.cfg.recon_samples
        pos = hist.gather(1, torch.randint(0, n, (b, m), generator=generator))  # (B, m)
        neg = torch.randint(1, self.cfg.n_items + 1, (b, m), generator=generator)  # (B, m)
        # a sampled "negative" that is in the history is a positive: exact labels, not noisy
        neg_in = (neg[:, :, None] == hist[:, None, :]).any(dim=-1)  # (B, m)
        items = torch.cat([pos, neg], dim=1)  # (B, 2m)
        target = torch.cat([torch.ones(b, m), neg_in.float()], dim=1)  # (B, 2m)
        keep = torch.cat([pos > 0, torch.ones(b, m, dtype=torch.bool)], dim=1)  # padding drawn
        loss = F.binary_cross_entropy_with_logits(
            self.recon(self.embed(items), summary), target, reduction="none"
        )
        recon = self.cfg.recon_weight * (loss * keep).sum() / keep.sum().clamp(min=1)
        return self.score_summary(summary, cand), recon


class FullAttention(nn.Module):
    """DIN-style target attention over the whole history (cost grows with its length)."""

    def __init__(self, cfg: ModelConfig, categories: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = ItemEmbedding(cfg.n_items, cfg.n_categories, cfg.dim, categories)
        self.stage2 = TargetAttention(cfg.dim)

    def memory(self, hist: torch.Tensor) -> torch.Tensor:
        return hist

    def forward(self, hist: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        hist = self.memory(hist)  # (B, M)
        return self.stage2(self.embed(cand), self.embed(hist), hist > 0)

    def train_forward(
        self, hist: torch.Tensor, cand: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self(hist, cand), torch.zeros(())


class LastN(FullAttention):
    """Target attention over the last ``cfg.last_n`` items only (histories are left-padded)."""

    def memory(self, hist: torch.Tensor) -> torch.Tensor:
        return hist[:, -self.cfg.last_n :]  # (B, min(L, N))


_KINDS = {"vista": Vista, "full": FullAttention, "lastn": LastN}


def build_model(cfg: ModelConfig, categories: np.ndarray | torch.Tensor, seed: int) -> nn.Module:
    """A freshly initialised model of ``cfg.kind`` (seeded)."""
    torch.manual_seed(seed)
    return _KINDS[cfg.kind](cfg, torch.as_tensor(np.asarray(categories)))


def model_version(model: nn.Module) -> str:
    """A fingerprint of the weights and config: a summary cache is valid for this value only."""
    h = hashlib.sha256(repr(sorted(model.cfg.to_dict().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
