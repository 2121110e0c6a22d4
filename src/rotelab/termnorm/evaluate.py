"""Exact-match evaluation of term -> ID queries by one-pass scoring, gains with CIs, and the
embedding alignment of a term with its ID.

A query is correct when the model's greedy choice reproduces every token of the identifier.
Teacher forcing decides that in one forward pass over ``prompt + id``: the greedy continuation
equals the ID exactly when the argmax at every ID position is the ID's next token (the first
mismatch is where greedy decoding would leave it). So no decoding is needed. The verdict needs
only the argmax, so :func:`exact_match` runs the LM head on the ID positions alone, in vocabulary
chunks, keeping a running maximum and the first index attaining it (no softmax, no top-k); the
ID's log-probability, when asked for, adds a running log-sum-exp to the same chunks. Ties are
broken as greedy decoding's ``argmax`` breaks them: the lowest token index wins, so a target
tied with an earlier token is wrong. :func:`greedy_exact_match` decodes instead; it is kept for
the benchmark and as the reference the tests compare with.

Verdicts alone (``logprob=False``) stop early: a pair is wrong from its first wrong ID token on,
so nothing after it is computed. The prompts go through the model first, in batches of one
prompt length (no padding), keeping their keys and values; the head then checks the first ID
token; only the rows still right continue, teacher-forced over the next stage of ID tokens (the
stages grow: tokens 2-4, then the rest) on their cached prompts. Where a model gets the first ID
token wrong for most terms (a model before fine-tuning, withheld terms), the ID positions are
never computed at all. While half the batch or more is still right, the rest of the ID is
checked in one pass instead (for a model that knows most answers, stages would save little and
cost passes over few rows). Each stage is one pass over many tokens, never a token-by-token
decode.

Alignment cosines pool each input's hidden states behind a BOS token, leaving that first
position out (the first position is an attention sink in trained LMs, over 100x the others' norm
on SmolLM2) and are *centred*: the mean
pooled state over all the terms and IDs of the call is subtracted first, because a residual
stream carries a large component shared by every input (on SmolLM2 the raw cosine is 0.999-1.000
for every pair), which says nothing about the pair.

Gains (Pericharla et al. 2025): memorization = accuracy on the trained terms after fine-tuning
minus before; generalization = the same on the withheld terms. Rates get Wilson intervals; a
gain gets a paired percentile bootstrap over terms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from rotelab.lm import (
    LM,
    cache_rows,
    encode_texts,
    fused_llama_weights,
    lean_llama,
    length_buckets,
    pad_batch,
    rms_norm,
)
from rotelab.stats import bootstrap_auc, rate_with_ci
from rotelab.termnorm.prompts import Template, encode_pairs

__all__ = [
    "STAGES",
    "alignment",
    "alignment_outcome",
    "argmax_hits",
    "exact_match",
    "gain_table",
    "greedy_exact_match",
    "paired_gain",
]


#: :func:`exact_match`'s default early-stop stages after the prompts' pass (which checks the first
#: ID token): up to the 4th ID token, then the rest; three passes at most, each over many tokens.
STAGES = (4,)
#: ... unless this share of the batch or more is still right: then the rest of the ID at once.
REST_AT = 0.5


def exact_match(
    lm: LM,
    terms: Sequence[str],
    ids: Sequence[str],
    template: Template,
    *,
    batch_size: int = 64,
    logprob: bool = True,
    vocab_chunk: int = 8192,
    stages: Sequence[int] | None = STAGES,
    precision: str = "fp32",
    near_tie: float | None = None,
) -> pd.DataFrame:
    """Per pair: ``correct`` (greedy reproduces the whole ID), ``id_tokens`` and, with
    ``logprob``, ``logprob`` (sum over the ID's tokens), from one teacher-forced pass per batch
    of similar lengths; ``logprob=False`` gives the verdicts alone, the fastest: they stop at
    each pair's first wrong ID token. The prompts' pass checks the first ID token, then one
    teacher-forced pass per stage checks the ID tokens up to each count of ``stages``
    (increasing, >= 2), and a last pass the rest; ``stages=None`` checks the whole ID in one
    pass, as with ``logprob``.

    ``precision="bf16"`` (verdicts with early stop only) screens in a bfloat16 copy of the model
    and redoes in the model's own precision every pair whose verdict rests on a logit gap under
    ``near_tie`` (default :func:`rotelab.measure.extraction.default_near_tie`: 1.5, from
    SmolLM2's measured bf16 error; exact ties have gap 0 and are always redone); a ``rechecked``
    column says which. The verdicts are then the fp32 ones as long as the bf16 error stays under
    ``near_tie`` on the pairs not redone: a measured margin, not a proven bound."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    if precision == "bf16" and (logprob or stages is None):
        raise ValueError("precision='bf16' is for early-stopping verdicts (logprob=False)")
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    n = len(seqs)
    if not logprob and stages is not None:
        id_tokens = [len(s) - k for s, k in zip(seqs, starts)]
        if precision == "fp32":
            correct = _staged_verdicts(lm, seqs, starts, batch_size, vocab_chunk, list(stages))
            return pd.DataFrame({"correct": correct, "id_tokens": id_tokens})
        if near_tie is None:
            from rotelab.measure.extraction import default_near_tie

            near_tie = default_near_tie(torch.bfloat16)
        fast = LM.from_model(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer)
        correct, unsure = _staged_verdicts(
            fast, seqs, starts, batch_size, vocab_chunk, list(stages), near=near_tie
        )
        del fast
        redo = np.flatnonzero(unsure)
        if redo.size:
            correct[redo] = _staged_verdicts(
                lm, [seqs[i] for i in redo], [starts[i] for i in redo], batch_size,
                vocab_chunk, list(stages),
            )  # fmt: skip
        return pd.DataFrame({"correct": correct, "id_tokens": id_tokens, "rechecked": unsure})
    correct = np.zeros(n, dtype=bool)
    total = np.zeros(n, dtype=np.float64)
    with torch.inference_mode():
        for batch in length_buckets([len(s) for s in seqs], batch_size):
            ok, lp = _batch_verdicts(
                lm, [seqs[i] for i in batch], [starts[i] for i in batch], logprob, vocab_chunk
            )
            correct[batch] = ok
            if logprob:
                total[batch] = lp
    out = {"correct": correct, "id_tokens": [len(s) - k for s, k in zip(seqs, starts)]}
    if logprob:
        out["logprob"] = total
    return pd.DataFrame(out)


def _batch_verdicts(
    lm: LM, seqs: list[list[int]], starts: list[int], logprob: bool, vocab_chunk: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B,) verdicts and (B,) ID log-probabilities (``None`` unless ``logprob``) of one batch."""
    ids, mask = pad_batch(seqs, lm.pad_id, device=lm.device)
    # the last column is only ever a target: the model never needs to read it
    hidden = lm.final_hidden(ids[:, :-1], mask[:, :-1])  # (B, T - 1, D)
    lengths = torch.tensor([len(s) for s in seqs], device=ids.device)
    first = torch.tensor(starts, device=ids.device) - 1  # position predicting the ID's 1st token
    pos = torch.arange(hidden.shape[1], device=ids.device)
    keep = (pos[None, :] >= first[:, None]) & (pos[None, :] < lengths[:, None] - 1)
    rows, cols = keep.nonzero(as_tuple=True)  # only the ID positions go through the head
    ok, lp = argmax_hits(lm, hidden[rows, cols], ids[rows, cols + 1], vocab_chunk, logprob)
    b = len(seqs)
    # a pair is right when no ID position misses
    misses = torch.zeros(b, dtype=torch.long, device=ids.device).index_add_(0, rows, (~ok).long())
    verdict = (misses == 0).cpu().numpy()
    if lp is None:
        return verdict, None
    sums = torch.zeros(b, dtype=torch.float64, device=ids.device).index_add_(0, rows, lp.double())
    return verdict, sums.cpu().numpy()


def _staged_verdicts(
    lm: LM,
    seqs: list[list[int]],
    starts: list[int],
    batch_size: int,
    vocab_chunk: int,
    stages: list[int],
    near: float | None = None,
):
    """(n,) verdicts that stop at each pair's first wrong ID token (see the module docstring);
    with ``near`` also (n,) whether a verdict rests on a logit gap under ``near``."""
    if any(b <= a for a, b in zip([1, *stages], stages)):
        raise ValueError(f"stages must be increasing counts of ID tokens >= 2, not {stages}")
    n = len(seqs)
    correct = np.zeros(n, dtype=bool)
    unsure = np.zeros(n, dtype=bool)
    # one prompt length per batch where possible (no padding); equal ID lengths together; then
    # in token order, so a batch's prompts share what leading tokens they can
    order = sorted(
        range(n), key=lambda i: (starts[i], len(seqs[i]) - starts[i], seqs[i][: starts[i]])
    )
    with torch.inference_mode():
        prompt_pass = _LlamaPromptPass.of(lm.model)
        for j in range(0, n, batch_size):
            batch = order[j : j + batch_size]
            correct[batch], unsure[batch] = _staged_batch(
                lm,
                [seqs[i][: starts[i]] for i in batch],
                [seqs[i][starts[i] :] for i in batch],
                vocab_chunk,
                stages,
                prompt_pass,
                near,
            )
    return correct if near is None else (correct, unsure)


def _staged_batch(
    lm: LM,
    prompts: list[list[int]],
    wants: list[list[int]],
    vocab_chunk: int,
    stages: list[int],
    prompt_pass: _LlamaPromptPass | None = None,
    near: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts of one batch: the prompts' pass, then one teacher-forced pass per stage over the
    ID tokens of the rows still right, on their cached keys and values; and which verdicts rest
    on a gap under ``near`` (a right row with any hit by less, a wrong row with no miss by more:
    its first miss may not be one in fp32; all False without ``near``)."""
    dev = lm.device
    base = lm.model.base_model
    b = len(prompts)
    ids, mask = _pad(prompts, lm.pad_id, "left", dev)  # rows end together
    padded = bool((mask == 0).any())
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # 0 at each row's first real token
    key = lm.cache_arg
    keys_real = mask.bool() if padded else None  # the lean stages' key mask (None: all real)
    if prompt_pass is not None:
        h_last, cache = prompt_pass(ids, mask if padded else None, pos)
    else:
        extra = {"attention_mask": mask, "position_ids": pos} if padded else {}
        out = base(input_ids=ids, use_cache=True, **extra)
        h_last, cache = out.last_hidden_state[:, -1], getattr(out, key)
    k = torch.tensor([len(w) for w in wants], device=dev)
    if k.min() < 1:  # pragma: no cover - check_pairs refuses empty IDs
        raise ValueError("an ID has no tokens")
    width = int(k.max())
    want = _pad(wants, lm.pad_id, "right", dev)[0]  # (B, width)
    first = want[:, 0]
    alive, gap = _hits_and_gaps(lm, h_last, first, vocab_chunk, near)
    close = torch.zeros(b, dtype=torch.bool, device=dev)  # a hit by less than near
    sure_miss = torch.zeros(b, dtype=torch.bool, device=dev)  # a miss by near or more
    if near is not None:
        close |= alive & (gap < near)
        sure_miss |= ~alive & (gap <= -near)
    rows = torch.arange(b, device=dev)  # batch rows of the cache's rows
    last = pos[:, -1]  # each cached row's last position
    done = 1  # ID tokens checked so far
    for end in [*stages, width]:
        end = min(end, width)
        # the rows still right whose ID goes on: all others are decided
        go = alive[rows] & (k[rows] > done)
        if end <= done or not bool(go.any()):
            break
        if int(go.sum()) >= REST_AT * b:
            # most of the batch still right: more stages would cut little work, and each pass
            # over few rows multiplies the weights less efficiently; check the rest at once
            end = width
        keep = go.nonzero(as_tuple=True)[0]
        every = len(keep) == len(rows)  # every row goes on: nothing to gather
        rows, last = rows[keep], last[keep]
        # inputs: ID tokens done-1 .. end-2; targets: done .. end-1 (where the ID has them)
        inp = want[rows, done - 1 : end - 1]
        tgt = want[rows, done:end]
        valid = torch.arange(done, end, device=dev)[None, :] < k[rows, None]  # (R, L)
        # a row whose ID ends inside this stage is decided by it: its padding is never read
        steps = torch.arange(1, end - done + 1, device=dev)[None, :]
        if prompt_pass is not None:
            if not every:
                cache = [(kk.index_select(0, keep), vv.index_select(0, keep)) for kk, vv in cache]
                keys_real = None if keys_real is None else keys_real[keep]
            hidden, cache = prompt_pass.stage(inp, cache, keys_real, last[:, None] + steps)
            if keys_real is not None:
                keys_real = torch.cat([keys_real, valid], dim=1)
        else:
            cache = cache_rows(cache, keep)  # the forward appends to the cache it is given
            mask = torch.cat([mask[keep], valid.long()], dim=1)
            out = base(
                input_ids=inp,
                attention_mask=mask,
                position_ids=last[:, None] + steps,
                use_cache=True,
                **{key: cache},
            )
            cache, hidden = getattr(out, key), out.last_hidden_state
        last = last + (end - done)
        r, c = valid.nonzero(as_tuple=True)
        hits, gap = _hits_and_gaps(lm, hidden[r, c], tgt[r, c], vocab_chunk, near)
        misses = torch.zeros(len(rows), dtype=torch.long, device=dev).index_add_(
            0, r, (~hits).long()
        )
        if near is not None:
            lo = torch.zeros(len(rows), dtype=torch.long, device=dev)
            close[rows] |= lo.index_add(0, r, (hits & (gap < near)).long()) > 0
            sure_miss[rows] |= lo.index_add(0, r, (~hits & (gap <= -near)).long()) > 0
        alive[rows] = alive[rows] & (misses == 0)
        done = end
    unsure = torch.where(alive, close, ~sure_miss) if near is not None else close
    return alive.cpu().numpy(), unsure.cpu().numpy()


def _hits_and_gaps(
    lm: LM, h: torch.Tensor, targets: torch.Tensor, vocab_chunk: int, near: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`argmax_hits`, and with ``near`` each target's logit minus the largest other
    logit (positive: a hit by that much; negative: a miss; 0: a tie)."""
    if near is None:
        return argmax_hits(lm, h, targets, vocab_chunk)[0], None
    n = h.shape[0]
    best = torch.full((n,), -math.inf, device=h.device)
    best_idx = torch.zeros(n, dtype=torch.long, device=h.device)
    other = torch.full((n,), -math.inf, device=h.device)
    target_logit = torch.zeros(n, device=h.device)
    for lo in range(0, lm.vocab_size, vocab_chunk):
        hi = min(lm.vocab_size, lo + vocab_chunk)
        logits = lm.head_logits(h, lo, hi)
        cmax, cidx = logits.max(dim=1)
        better = cmax > best  # strictly: the lowest index keeps a tie, as in argmax_hits
        best = torch.where(better, cmax, best)
        best_idx = torch.where(better, cidx + lo, best_idx)
        inside = (targets >= lo) & (targets < hi)
        col = (targets - lo).clamp(0, hi - lo - 1)[:, None]
        target_logit = torch.where(inside, logits.gather(1, col).squeeze(1), target_logit)
        logits.scatter_(1, col, torch.where(inside[:, None], -math.inf, logits.gather(1, col)))
        other = torch.maximum(other, logits.max(dim=1).values)
    return best_idx == targets, target_logit - other


def _pad(
    seqs: list[list[int]], pad_id: int, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rotelab.lm.pad_batch` in one tensor copy instead of one per row (the rows of a
    batch are short: the per-row copies were a tenth of the prompts' pass on the organism)."""
    lengths = torch.tensor([len(x) for x in seqs])
    width = int(lengths.max())
    cols = torch.arange(width)[None, :]
    real = cols < lengths[:, None] if side == "right" else cols >= width - lengths[:, None]
    ids = torch.full(real.shape, pad_id, dtype=torch.long)
    ids[real] = torch.tensor([t for x in seqs for t in x], dtype=torch.long)
    return ids.to(device), real.long().to(device)


class _LlamaPromptPass:
    """The Llama passes of :func:`_staged_batch`, run by hand on plain tensors (no cache object,
    no mask object, no module calls).

    The prompts' pass (``__call__``) makes every block's keys and values at every prompt
    position (what the later stages attend to), but runs the last block's query, attention
    output and MLP, and the final norm, at the last position only (the one that predicts the
    first ID token): the rest of the last block is never read. On the tiny organism (2 blocks)
    that is about 40% of the pass's products. Leading tokens shared by every prompt of a batch
    (the opening words of a template such as ``hpo``'s "The Human Phenotype Ontology ID of") run
    once, not once per prompt. A stage (:meth:`stage`) runs ID tokens over the
    cached keys and values of the rows still right. Query, key and value projections run as one
    product, as do the MLP's gate and up projections.

    The same operations as transformers' Llama forward, so the verdicts agree with greedy
    decoding to float rounding (as the model's own padded pass does); tested against it. Any
    other architecture, or a model with hooks installed, uses the model's own forward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.base = model.base_model
        self.qkv, self.gate_up = fused_llama_weights(self.base)

    @classmethod
    def of(cls, model: torch.nn.Module) -> _LlamaPromptPass | None:
        """The pass for ``model``, or ``None`` where it does not apply."""
        return cls(model) if lean_llama(model) else None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor):
        """(B, D) final hidden state at the last position of left-padded ``ids`` (B, T) and per
        block the keys and values of every position, ``(k, v)`` of (B, kv heads, T, d);
        ``mask`` (B, T) marks real tokens (``None``: no padding), ``pos`` their positions."""
        n, t = ids.shape
        if mask is None and n > 1:
            # leading tokens every row shares (a template's opening words): computed once, their
            # keys and values read by every row (the last prompt position is never shared)
            shared = int((ids == ids[:1]).all(0).long().cumprod(0).sum().clamp(max=t - 1))
            if shared:
                _, pre = self._blocks(ids[:1, :shared], pos[:1, :shared], None, None, True)
                past = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in pre]
                rest = t - shared
                causal = torch.ones(rest, rest, dtype=torch.bool, device=ids.device).tril_()
                seen = torch.ones(rest, shared, dtype=torch.bool, device=ids.device)
                allowed = torch.cat([seen, causal], dim=1)
                x, kv = self._blocks(ids[:, shared:], pos[:, shared:], allowed, past, True)
                return rms_norm(self.base.norm, x)[:, -1], kv
        allowed = None
        if mask is not None:
            # causal, padding keys masked; a padding query sees itself (never a row of -inf)
            eye = torch.eye(t, dtype=torch.bool, device=ids.device)
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril_()
            allowed = causal & (mask.bool()[:, None, None, :] | eye)  # (B, 1, T, T)
        x, kv = self._blocks(ids, pos, allowed, None, True)
        return rms_norm(self.base.norm, x)[:, -1], kv

    def stage(
        self,
        ids: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
        past_real: torch.Tensor | None,
        pos: torch.Tensor,
    ):
        """(R, L, D) final hidden states of tokens ``ids`` (R, L) at positions ``pos`` (R, L)
        continuing the cached keys and values ``past`` (per block, (R, kv heads, S, d)), whose
        real positions ``past_real`` (R, S) marks (``None``: all); and the keys and values with
        the new positions appended."""
        n, t = ids.shape
        s = past[0][0].shape[2]
        dev = ids.device
        causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril_()
        if past_real is None:
            allowed = torch.cat([torch.ones(t, s, dtype=torch.bool, device=dev), causal], dim=1)
        else:
            allowed = torch.cat(
                [past_real[:, None, None, :].expand(n, 1, t, s), causal.expand(n, 1, t, t)], -1
            )
        x, kv = self._blocks(ids, pos, allowed, past, False)
        return rms_norm(self.base.norm, x), kv

    def _blocks(self, ids, pos, allowed, past, last_only: bool):
        """Every block over ``ids`` (B, T); ``allowed`` (bool, broadcast over (B, heads, T,
        keys)) says which keys each query sees (``None``: causal, no past); ``last_only`` runs
        the last block's query, attention output and MLP at the last position only."""
        from torch.nn import functional as F  # noqa: N812

        base = self.base
        n, t = ids.shape
        x = base.embed_tokens(ids)
        cos, sin = base.rotary_emb(x, pos)  # (B, T, d)
        cos, sin = cos[:, None], sin[:, None]  # over (B, heads, T, d)
        kv = []
        last = len(base.layers) - 1
        for i, layer in enumerate(base.layers):
            att = layer.self_attn
            d, groups = att.head_dim, att.num_key_value_groups
            heads, kv_heads = att.q_proj.out_features // d, att.k_proj.out_features // d
            h = rms_norm(layer.input_layernorm, x)
            w = self.qkv[i]
            one = last_only and i == last  # only the last position's query is ever read
            if not one:
                q, k, v = F.linear(h, w).split([heads * d, kv_heads * d, kv_heads * d], -1)
            else:
                q = F.linear(h[:, -1:], w[: heads * d])
                k, v = F.linear(h, w[heads * d :]).split([kv_heads * d, kv_heads * d], -1)
            q = q.view(n, -1, heads, d).transpose(1, 2)
            k = k.view(n, t, kv_heads, d).transpose(1, 2)
            v = v.view(n, t, kv_heads, d).transpose(1, 2)
            half = d // 2
            qc, qs = (cos[:, :, -1:], sin[:, :, -1:]) if one else (cos, sin)
            q = q * qc + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * qs
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            if past is not None:
                k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            kv.append((k, v))
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            sees = allowed
            if one:
                sees = None if allowed is None else allowed[..., -1:, :]
                x = x[:, -1:]
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=sees, is_causal=allowed is None and not one,
                scale=att.scaling,
            )  # fmt: skip
            x = x + F.linear(o.transpose(1, 2).reshape(n, x.shape[1], -1), att.o_proj.weight)
            gate_up = F.linear(rms_norm(layer.post_attention_layernorm, x), self.gate_up[i])
            gate, up = gate_up.chunk(2, dim=-1)
            act = layer.mlp.act_fn
            if isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation":
                a = F.silu(gate, inplace=True)  # as rotelab.lm's lean MLP: no new tensor
            else:
                a = act(gate)
            x = x + F.linear(a.mul_(up), layer.mlp.down_proj.weight)
        return x, kv


def argmax_hits(
    lm: LM, h: torch.Tensor, targets: torch.Tensor, vocab_chunk: int = 8192, logprob: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Whether each target is the LM head's argmax at hidden states ``h`` (N, D), chunked over
    the vocabulary with a running maximum and the first index attaining it: exactly
    ``head_logits(h).argmax(-1) == targets`` (the lowest index wins a tie, as in greedy
    decoding), never holding more than (N, ``vocab_chunk``) logits. With ``logprob`` also
    log p(target) from a running log-sum-exp (in place on each chunk's logits: call it without
    autograd, as :func:`exact_match` does); else ``None``."""
    n = h.shape[0]
    f32 = torch.float32
    best = torch.full((n,), -math.inf, device=h.device, dtype=f32)
    best_idx = torch.zeros(n, dtype=torch.long, device=h.device)
    lse = torch.full((n,), -math.inf, device=h.device, dtype=f32) if logprob else None
    target_logit = torch.zeros(n, device=h.device, dtype=f32)
    vocab = lm.vocab_size
    for lo in range(0, vocab, vocab_chunk):
        hi = min(vocab, lo + vocab_chunk)
        logits = lm.head_logits(h, lo, hi)  # (N, chunk)
        cmax, cidx = logits.max(dim=1)  # first index of the chunk's maximum
        # strictly greater: an earlier chunk keeps a tie, so the lowest index wins
        better = cmax > best
        best = torch.where(better, cmax, best)
        best_idx = torch.where(better, cidx + lo, best_idx)
        if lse is not None:
            inside = (targets >= lo) & (targets < hi)
            picked = logits.gather(1, (targets - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1)
            target_logit = torch.where(inside, picked, target_logit)
            w = logits.sub_(cmax[:, None]).exp_().sum(1).log_().add_(cmax)
            lse = torch.logaddexp(lse, w)
    hits = best_idx == targets
    return hits, (target_logit - lse) if lse is not None else None


def greedy_exact_match(
    lm: LM, terms: Sequence[str], ids: Sequence[str], template: Template, *, batch_size: int = 64
) -> np.ndarray:
    """(n,) bool: greedy decoding of as many tokens as the ID has reproduces the ID."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    prefixes = [s[:k] for s, k in zip(seqs, starts)]
    wants = [s[k:] for s, k in zip(seqs, starts)]
    got = lm.generate(prefixes, [len(w) for w in wants], batch_size=batch_size, ragged=True)
    return np.array([g == w for g, w in zip(got, wants)], dtype=bool)


def paired_gain(
    before: Sequence[bool], after: Sequence[bool], *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean(after) - mean(before) over the same terms, with a paired percentile bootstrap CI."""
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.size == 0:
        return {"gain": float("nan"), "gain_ci": [float("nan"), float("nan")]}
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return {
        "gain": float(d.mean()),
        "gain_ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
    }


def gain_table(
    results: pd.DataFrame, by: Sequence[str] = (), *, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Accuracy before and after fine-tuning and the gain, per split (train = memorization,
    withheld = generalization) and per group of ``by``.

    Args:
        results: one row per (term, seed): ``split``, ``before``, ``after`` (bool) and ``by``.
    """
    keys = ["split", *by]
    rows = []
    for key, g in results.groupby(keys, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        before = rate_with_ci(g["before"].tolist())
        after = rate_with_ci(g["after"].tolist())
        gain = paired_gain(g["before"], g["after"], n_boot=n_boot, seed=seed)
        rows.append(
            {
                **dict(zip(keys, key)),
                "measure": "memorization" if key[0] == "train" else "generalization",
                "n": len(g),
                "before": before.rate,
                "before_ci": before.ci,
                "after": after.rate,
                "after_ci": after.ci,
                **gain,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ alignment
def alignment(
    lm: LM,
    terms: Sequence[str],
    ids: Sequence[str],
    *,
    layer: int | None = None,
    centre: bool = True,
    skip_first: bool = True,
) -> np.ndarray:
    """(n,) cosine similarity between the mean hidden state of each term and of its ID, each
    encoded alone, at ``layer`` (default: the middle block; 0 = embeddings).

    With ``skip_first`` (the default) each input is encoded after one extra first token (the
    tokenizer's BOS, else its EOS) and the mean leaves that first position out. In a trained LM
    the first position is the attention sink, whose state dwarfs the others (SmolLM2-135M,
    middle block: 112-143x the mean norm of the other positions), so the pooled mean was that
    one state scaled by 1/length and the cosine followed token lengths. Merely dropping an
    input's own first token is not enough: a token repeating it right after (the NCBI ID
    ``22``) becomes a second sink of the same norm, and a one-token input would have nothing
    left; behind a BOS every token of the input keeps an ordinary state. On the tiny organism
    (first-position norm 0.7-2x the others) it changes little; one definition for every model.
    Without a BOS or EOS token the input's own first position is left out (one-token inputs
    keep it).

    With ``centre`` (the default) the mean of all 2n pooled states (every term and every ID of
    the call) is subtracted before the cosine, so the component every input shares does not
    make every pair look aligned; a cosine then says how a pair agrees relative to the others
    (with fewer than two pairs there is nothing to centre against, and the raw cosine is used).
    """
    layer = lm.num_layers // 2 if layer is None else layer
    enc = lm.tokenizer
    t, i = encode_texts(enc, terms), encode_texts(enc, ids)
    if skip_first:
        first = getattr(enc, "bos_token_id", None)
        first = getattr(enc, "eos_token_id", None) if first is None else first
        seqs = t + i if first is None else [[first, *x] for x in t + i]
        states = lm.hidden_states(seqs, [layer], pool="none")[layer]
        h = np.stack([(s[1:] if len(s) > 1 else s).astype(np.float64).mean(0) for s in states])
    else:
        h = np.asarray(lm.hidden_states(t + i, [layer], pool="mean")[layer], dtype=np.float64)
    if centre and len(terms) > 1:
        h = h - h.mean(axis=0, keepdims=True)
    a, b = h[: len(terms)], h[len(terms) :]
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def alignment_outcome(
    align: Sequence[float], correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Does alignment predict the outcome? ROC AUC (bootstrap CI) and Spearman's rho of
    alignment vs ``correct``; ``None`` fields when one class is missing."""
    from scipy.stats import spearmanr

    s = np.asarray(align, dtype=float)
    y = np.asarray(correct, dtype=bool)
    out: dict = {"n": int(y.size), "positives": int(y.sum())}
    if y.all() or not y.any():
        return {**out, "auc": None, "auc_ci": None, "spearman": None, "spearman_p": None}
    auc, ci = bootstrap_auc(s, y, n_boot=n_boot, seed=seed)
    rho, p = spearmanr(s, y.astype(float))
    return {**out, "auc": auc, "auc_ci": ci, "spearman": float(rho), "spearman_p": float(p)}
