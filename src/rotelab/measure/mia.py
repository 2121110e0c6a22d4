"""Membership inference: attacks, span scoring, metrics with confidence intervals, a blind check.

*Was this text in the model's training data?* Every attack here returns one score per text with
one sign convention: **higher = more likely a member** (``HIGHER_IS_BETTER``). The likelihood
attacks come from one teacher-forced pass per text (:meth:`rotelab.lm.LM.score` with
``moments=True``), so adding Min-K%++ to LOSS costs no second forward pass and no
(batch x length x vocab) tensor.

Attacks and where they come from:

- ``loss``: mean log-likelihood (Yeom et al. 2018, "Privacy risk in machine learning").
- ``zlib``: log-likelihood divided by the zlib-compressed size of the scored text (Carlini et al.
  2021, "Extracting training data from large language models").
- ``min_k``: mean of the k% lowest token log-probs (Shi et al. 2024, "Detecting pretraining data
  from large language models").
- ``min_k_pp``: Min-K%++, the same on z_t = (log p(x_t) - mu_t) / sigma_t with mu_t, sigma_t^2 the
  mean and variance of log p over the full vocabulary under p (Zhang et al. 2024, "Min-K%++").
- ``reference``: NLL under a reference model minus NLL under the target (Carlini et al. 2021).
- ``neighbourhood``: mean NLL of perturbed neighbours minus NLL of the text (Mattern et al. 2023,
  "Membership inference attacks against language models via neighbourhood comparison"); the
  neighbours come from a pluggable generator, by default word substitution from a corpus
  vocabulary (no masked LM needed).
- ``recall``: LL(x | non-member prefix) / LL(x) (Xie et al. 2024, "ReCaLL"); members lose more
  likelihood when conditioned on unrelated text, so the ratio is larger for them.
- ``grad_norm``: minus the norm of the parameter gradient of the NLL (members sit nearer a
  minimum; as in mimir, Duan et al. 2024, "Do membership inference attacks work on LLMs?").

Any score can be restricted to a token span (the secret inside a canary rather than the whole
sequence): the span's tokens are scored given everything before them. Metrics follow the advice of
Carlini et al. 2022 ("Membership inference attacks from first principles"): ROC AUC with a
stratified bootstrap CI, TPR at 1% and 0.1% FPR with CIs, refused when too few non-members exist
to resolve that FPR; results are broken down by duplication count, insertion phase and kind as in
the Hubble evaluations (Wei et al. 2025). A model-free blind baseline (:mod:`rotelab.measure.blind`,
Das et al. 2024, "Blind baselines beat membership inference attacks for foundation models") checks
the split itself, and Secret Sharer exposure (:mod:`rotelab.measure.exposure`) ranks each secret
among candidates of its format.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, TokenScores, check_load_options

__all__ = [
    "Attack",
    "HIGHER_IS_BETTER",
    "LIKELIHOOD_ATTACKS",
    "METRIC_HIGHER_IS_BETTER",
    "MIAConfig",
    "MIAText",
    "NeighbourGenerator",
    "SpanMode",
    "WordSubstitution",
    "attack_metrics",
    "auc_score",
    "bootstrap_auc",
    "bootstrap_tpr_at_fpr",
    "by_group_metrics",
    "grad_norm_scores",
    "likelihood_scores",
    "loss_score",
    "mia",
    "min_k_pp_score",
    "min_k_score",
    "format_table",
    "neighbourhood_scores",
    "prepare_texts",
    "recall_scores",
    "reference_scores",
    "roc_points",
    "tpr_at_fpr",
    "zlib_score",
]


class Attack(str, Enum):
    """Membership inference attacks; every score is higher = more likely a member."""

    loss = "loss"
    zlib = "zlib"
    min_k = "min_k"
    min_k_pp = "min_k_pp"
    reference = "reference"
    neighbourhood = "neighbourhood"
    recall = "recall"
    grad_norm = "grad_norm"


#: Attacks computed together from one teacher-forced pass of the target model.
LIKELIHOOD_ATTACKS = (Attack.loss, Attack.zlib, Attack.min_k, Attack.min_k_pp)

#: Direction of every attack score (one convention: higher = member).
HIGHER_IS_BETTER = {a.value: True for a in Attack}

#: Direction of every metric, from the attacker's point of view.
METRIC_HIGHER_IS_BETTER = {"auc": True, "tpr_at_1pct_fpr": True, "tpr_at_0.1pct_fpr": True}

#: The FPRs at which TPR is reported, keyed as in summary.json.
FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


class SpanMode(str, Enum):
    """Which tokens of an organism item are scored.

    ``auto``: the sensitive span for secrets and bios (the digits, the e-mail and ID: a whole-text
    loss would be dominated by the template shared with the controls), the whole text for passages
    (every token of a passage is equally private, so more tokens means more signal).
    ``full``: every token after the first. ``sensitive``: the ledger's span for every kind.
    """

    auto = "auto"
    full = "full"
    sensitive = "sensitive"


@dataclass
class MIAText:
    """One text to classify, in token space.

    Attributes:
        text_id: a stable id (ledger item id, or ``<file>:<line>``).
        tokens: token ids fed to the model (no special tokens; at most the context length).
        span: ``[start, end)`` token positions scored; ``1 <= start < end <= len(tokens)`` because
            the first token has no context to be predicted from.
        member: the ground truth.
        groups: attributes results are broken down by (``count``, ``phase``, ``kind``, ...).
    """

    text_id: str
    tokens: list[int]
    span: tuple[int, int]
    member: bool
    groups: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- per-text scores
def loss_score(logprobs: np.ndarray) -> float:
    """LOSS: mean log-probability of the scored tokens (= minus the NLL). ``logprobs``: (n,)."""
    return float(np.mean(logprobs, dtype=np.float64))


def zlib_score(logprobs: np.ndarray, text: str) -> float:
    """zlib ratio: mean log-probability / zlib-compressed size (bytes) of the scored text."""
    return loss_score(logprobs) / len(zlib.compress(text.encode("utf-8")))


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    # mimir takes int(n * k) tokens, which is 0 for short spans; keep at least one token.
    n_low = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values.astype(np.float64))[:n_low]))


def min_k_score(logprobs: np.ndarray, k: float = 0.2) -> float:
    """Min-K%: mean of the ``max(1, int(k n))`` lowest token log-probs. ``logprobs``: (n,)."""
    return _lowest_k_mean(logprobs, k)


def min_k_pp_score(
    logprobs: np.ndarray, mu: np.ndarray, sigma2: np.ndarray, k: float = 0.2
) -> float:
    """Min-K%++: Min-K% over z_t = (log p(x_t) - mu_t) / sigma_t; all arrays (n,).

    A fully peaked distribution has sigma_t = 0; it is floored at 1e-12 so z stays finite.
    """
    lp, m = logprobs.astype(np.float64), mu.astype(np.float64)
    sigma = np.sqrt(np.maximum(sigma2.astype(np.float64), 1e-12))
    return _lowest_k_mean((lp - m) / sigma, k)


def _check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise RotelabError(f"k for Min-K% must be in (0, 1], got {k}; e.g. 0.2 for 20%")


def _scored(lm: LM, items: Sequence[MIAText], **kw) -> list[TokenScores]:
    return lm.score(
        [it.tokens[: it.span[1]] for it in items],
        targets_from=[it.span[0] for it in items],
        **kw,
    )


def likelihood_scores(
    lm: LM,
    items: Sequence[MIAText],
    *,
    k: float = 0.2,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """LOSS, zlib, Min-K% and Min-K%++ for every text from one teacher-forced pass.

    Args:
        lm: the target model.
        items: texts with their scored spans.
        k: fraction of lowest tokens for Min-K% and Min-K%++.

    Returns:
        A frame with one row per item (input order) and columns ``loss, zlib, min_k, min_k_pp``
        (higher = member) plus ``nll`` and ``n_scored`` (tokens in the span).
    """
    _check_k(k)
    scores = _scored(lm, items, moments=True, batch_size=batch_size, progress=progress)
    rows = []
    for it, sc in zip(items, scores):
        span_text = lm.decode(it.tokens[it.span[0] : it.span[1]])
        rows.append(
            {
                "loss": loss_score(sc.logprobs),
                "zlib": zlib_score(sc.logprobs, span_text),
                "min_k": min_k_score(sc.logprobs, k),
                "min_k_pp": min_k_pp_score(sc.logprobs, sc.mu, sc.sigma2, k),
                "nll": -loss_score(sc.logprobs),
                "n_scored": len(sc.logprobs),
            }
        )
    return pd.DataFrame(rows)


def _mean_nll(lm: LM, seqs: Sequence[Sequence[int]], starts: Sequence[int], **kw) -> np.ndarray:
    scores = lm.score(seqs, targets_from=list(starts), **kw)
    return np.array([-loss_score(sc.logprobs) for sc in scores])


def check_same_tokenizer(lm: LM, ref: LM, items: Sequence[MIAText] = ()) -> None:
    """Raise a RotelabError unless ``ref`` tokenizes like ``lm`` (same vocabulary, same ids)."""
    if lm.tokenizer.get_vocab() != ref.tokenizer.get_vocab():
        raise RotelabError(
            f"reference model {ref.name!r} uses a different tokenizer than {lm.name!r}; "
            "the reference attack compares token log-probs, so give a model with the same tokenizer"
        )
    for it in list(items)[:8]:
        text = lm.decode(it.tokens)
        if lm.encode(text) != ref.encode(text):
            raise RotelabError(
                f"reference model {ref.name!r} tokenizes {it.text_id!r} differently than "
                f"{lm.name!r}; give a reference model with the same tokenizer"
            )


def reference_scores(
    lm: LM, ref: LM, items: Sequence[MIAText], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """Reference attack: NLL_ref(span) - NLL_target(span), shape (n,). Higher = member."""
    check_same_tokenizer(lm, ref, items)
    seqs = [it.tokens[: it.span[1]] for it in items]
    starts = [it.span[0] for it in items]
    kw = {"batch_size": batch_size, "progress": progress}
    return _mean_nll(ref, seqs, starts, **kw) - _mean_nll(lm, seqs, starts, **kw)


# ------------------------------------------------------------------------------ neighbourhood
class NeighbourGenerator(Protocol):
    """Makes ``n`` perturbed neighbours of a text; must be deterministic given ``rng``."""

    def __call__(self, text: str, n: int, rng: np.random.Generator) -> list[str]: ...


_WORD = re.compile(r"\w+")


def _word_class(word: str) -> str:
    if word.isdigit():
        return "digit"
    if word[:1].isupper():
        return "upper"
    return "lower" if word.isalpha() else "other"


@dataclass
class WordSubstitution:
    """Neighbours by replacing a fraction of words with random corpus words of the same shape.

    Shape classes (digits, Capitalized, lowercase, other) keep a neighbour plausible: a digit in a
    secret is swapped for a digit, a name for a capitalized word. No hub model is needed.

    Args:
        vocabulary: candidate replacement words (use :meth:`from_texts`).
        fraction: share of the words replaced in each neighbour (at least one).
    """

    vocabulary: Sequence[str]
    fraction: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise RotelabError(
                f"neighbour substitution fraction must be in (0, 1], got {self.fraction}"
            )
        by_class: dict[str, list[str]] = {}
        for word in sorted(set(self.vocabulary)):
            by_class.setdefault(_word_class(word), []).append(word)
        self._by_class = by_class

    @classmethod
    def from_texts(cls, texts: Iterable[str], fraction: float = 0.15) -> WordSubstitution:
        """Vocabulary = every word in ``texts``."""
        vocab = {w for t in texts for w in _WORD.findall(t)}
        return cls(sorted(vocab), fraction)

    def __call__(self, text: str, n: int, rng: np.random.Generator) -> list[str]:
        matches = list(_WORD.finditer(text))
        if not matches:
            return [text] * n
        out = []
        for _ in range(n):
            m = max(1, round(self.fraction * len(matches)))
            chosen = sorted(rng.choice(len(matches), size=min(m, len(matches)), replace=False))
            pieces, last = [], 0
            for j in chosen:
                match = matches[j]
                pool = self._by_class.get(_word_class(match.group()), [])
                options = [w for w in pool if w != match.group()] if len(pool) < 64 else pool
                new = options[int(rng.integers(len(options)))] if options else match.group()
                if new == match.group() and len(pool) > 1:
                    new = pool[(pool.index(new) + 1) % len(pool)]
                pieces += [text[last : match.start()], new]
                last = match.end()
            pieces.append(text[last:])
            out.append("".join(pieces))
        return out


def _text_rng(seed: int, text_id: str) -> np.random.Generator:
    # Seeded by the text's id, not its position, so a text gets the same neighbours in any split.
    return np.random.default_rng([seed, zlib.crc32(text_id.encode("utf-8"))])


def neighbourhood_scores(
    lm: LM,
    items: Sequence[MIAText],
    generator: NeighbourGenerator,
    *,
    n_neighbours: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Neighbourhood attack: mean NLL of neighbours of the span - NLL of the span, shape (n,).

    Only the scored span is perturbed; the tokens before it stay, so the neighbours are scored in
    the same context as the original.
    """
    if n_neighbours < 1:
        raise RotelabError("the neighbourhood attack needs at least one neighbour")
    ctx = lm.context_length
    seqs, starts, owner = [], [], []
    for i, it in enumerate(items):
        start, end = it.span
        span_text = lm.decode(it.tokens[start:end])
        for nb in generator(span_text, n_neighbours, _text_rng(seed, it.text_id)):
            seq = (list(it.tokens[:start]) + lm.encode(nb))[:ctx]
            if len(seq) <= start:  # a neighbour that encodes to nothing keeps the original span
                seq = list(it.tokens[:end])
            seqs.append(seq)
            starts.append(start)
            owner.append(i)
    kw = {"batch_size": batch_size, "progress": progress}
    nb_nll = _mean_nll(lm, seqs, starts, **kw)
    nb_mean = np.bincount(owner, weights=nb_nll, minlength=len(items)) / np.bincount(
        owner, minlength=len(items)
    )
    own = _mean_nll(
        lm, [it.tokens[: it.span[1]] for it in items], [it.span[0] for it in items], **kw
    )
    return nb_mean - own


# ---------------------------------------------------------------------------------- ReCaLL
def recall_scores(
    lm: LM,
    items: Sequence[MIAText],
    prefix_tokens: Sequence[int],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """ReCaLL: LL(span | non-member prefix + text before span) / LL(span | text before span).

    The prefix is prepended to the whole text. Where prefix + text exceed the context, the text is
    cut from the right (the span with it), and both likelihoods use the same cut text so the ratio
    compares like with like. Shape (n,); higher = member.
    """
    prefix = list(prefix_tokens)
    if not prefix:
        raise RotelabError("ReCaLL needs a non-empty non-member prefix")
    room = lm.context_length - len(prefix)
    plain, cond, s_plain, s_cond = [], [], [], []
    for it in items:
        start, end = it.span
        end = min(end, room)
        if end <= start:
            raise RotelabError(
                f"text {it.text_id!r}: no room for the span after a {len(prefix)}-token ReCaLL "
                f"prefix in a {lm.context_length}-token context; use a shorter --recall-prefix-tokens"
            )
        plain.append(it.tokens[:end])
        s_plain.append(start)
        cond.append(prefix + list(it.tokens[:end]))
        s_cond.append(start + len(prefix))
    kw = {"batch_size": batch_size, "progress": progress}
    return _mean_nll(lm, cond, s_cond, **kw) / _mean_nll(lm, plain, s_plain, **kw)


def recall_prefix(lm: LM, nonmember_texts: Sequence[str], n_tokens: int) -> list[int]:
    """The last ``n_tokens`` of non-member texts joined by end-of-text, ending with end-of-text."""
    if n_tokens < 1:
        raise RotelabError("--recall-prefix-tokens must be >= 1")
    eos = lm.tokenizer.eos_token_id
    ids: list[int] = []
    for text in nonmember_texts:
        ids += lm.encode(text) + ([eos] if eos is not None else [])
        if len(ids) >= n_tokens:
            break
    if not ids:
        raise RotelabError("the ReCaLL prefix texts are empty")
    return ids[-n_tokens:]


# ------------------------------------------------------------------------------ gradient norm
def grad_norm_scores(lm: LM, items: Sequence[MIAText], *, progress: bool = False) -> np.ndarray:
    """Minus the L2 norm of d NLL(span) / d theta over all trainable parameters, shape (n,).

    One forward and backward pass per text (per-example gradients cannot be batched without
    per-sample-gradient machinery); gradients are taken with ``torch.autograd.grad`` so the
    model's ``.grad`` buffers are never touched.
    """
    from rotelab.lm import progress_bar

    params = [p for p in lm.model.parameters() if p.requires_grad]
    if not params:
        raise RotelabError("the gradient-norm attack needs trainable parameters; none require grad")
    out = np.empty(len(items))
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        progress_bar(progress, len(items), "grad norm") as advance,
    ):
        for i, it in enumerate(items):
            start, end = it.span
            ids = torch.tensor([it.tokens[:end]], device=lm.device)
            logits = lm.model(input_ids=ids, use_cache=False).logits[0, start - 1 : end - 1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll = -logp.gather(1, ids[0, start:end, None]).mean()
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            sq = sum(float(g.double().square().sum()) for g in grads if g is not None)
            out[i] = -math.sqrt(sq)
            advance()
    return out


# ------------------------------------------------------------------------------------- metrics
def _labels_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-d arrays of the same length")
    if not np.isfinite(s).all():
        raise RotelabError("some attack scores are not finite (NaN or inf); check the inputs")
    return s, y


def auc_score(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC = P(member score > non-member score) + 0.5 P(tie). Higher is better (attacker)."""
    s, y = _labels_scores(scores, labels)
    return float(_auc_rows(s[None, y], s[None, ~y])[0])


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC for each row of (B, n_pos) member and (B, n_neg) non-member scores, via mid-ranks."""
    from scipy.stats import rankdata

    both = np.concatenate([pos, neg], axis=1)
    ranks = rankdata(both, axis=1)  # ties get their average rank = the 0.5 convention
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    return (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _tpr_rows(pos: np.ndarray, neg: np.ndarray, fpr: float) -> np.ndarray:
    """TPR at FPR <= ``fpr`` for each row: threshold above all but floor(fpr n_neg) non-members."""
    n_neg = neg.shape[1]
    allowed = int(math.floor(fpr * n_neg + 1e-9))
    thresholds = -np.sort(-neg, axis=1)[:, allowed]  # the (allowed+1)-th largest non-member score
    return (pos > thresholds[:, None]).mean(1)


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[bool], fpr: float) -> float:
    """Largest TPR whose threshold keeps the empirical FPR <= ``fpr`` (strict ``>`` threshold)."""
    s, y = _labels_scores(scores, labels)
    return float(_tpr_rows(s[None, y], s[None, ~y], fpr)[0])


def _bootstrap_indices(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Stratified: members and non-members are resampled separately, so every replicate has both.
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return (
        pos[rng.integers(len(pos), size=(n_boot, len(pos)))],
        neg[rng.integers(len(neg), size=(n_boot, len(neg)))],
    )


def _percentile_ci(values: np.ndarray, level: float) -> list[float]:
    a = (1 - level) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def bootstrap_auc(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, list[float] | None]:
    """AUC and its stratified percentile-bootstrap CI (``None`` when ``n_boot`` is 0)."""
    s, y = _labels_scores(scores, labels)
    auc = float(_auc_rows(s[None, y], s[None, ~y])[0])
    if n_boot <= 0:
        return auc, None
    ip, ineg = _bootstrap_indices(y, n_boot, seed)
    return auc, _percentile_ci(_auc_rows(s[ip], s[ineg]), level)


def min_nonmembers(fpr: float, min_false_positives: int) -> int:
    """Non-members needed to report TPR at ``fpr``: ``ceil(min_false_positives / fpr)``."""
    return math.ceil(min_false_positives / fpr - 1e-9)


def bootstrap_tpr_at_fpr(
    scores: Sequence[float],
    labels: Sequence[bool],
    fpr: float,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, Any]:
    """TPR at ``fpr`` with a bootstrap CI, or a refusal.

    The rule: TPR at FPR α is reported only with at least ``ceil(min_false_positives / α)``
    non-members, i.e. when the threshold lets through at least ``min_false_positives`` of them.
    With fewer, the only thresholds with FPR <= α sit above (nearly) every non-member, so the
    number measures "TPR at FPR 0 on this sample", not at α, and its error is unbounded.

    Returns:
        ``{"value", "ci", "reason"}``; ``value`` and ``ci`` are ``None`` with a ``reason`` when
        refused.
    """
    s, y = _labels_scores(scores, labels)
    n_neg = int((~y).sum())
    need = min_nonmembers(fpr, min_false_positives)
    if n_neg < need:
        return {
            "value": None,
            "ci": None,
            "reason": (
                f"needs >= {need} non-members ({min_false_positives} expected false positives "
                f"at FPR {fpr:g}); have {n_neg}"
            ),
        }
    value = float(_tpr_rows(s[None, y], s[None, ~y], fpr)[0])
    ci = None
    if n_boot > 0:
        ip, ineg = _bootstrap_indices(y, n_boot, seed)
        ci = _percentile_ci(_tpr_rows(s[ip], s[ineg], fpr), level)
    return {"value": value, "ci": ci, "reason": None}


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> pd.DataFrame:
    """The ROC curve: columns ``fpr, tpr, threshold`` (sklearn's, all thresholds kept)."""
    from sklearn.metrics import roc_curve

    s, y = _labels_scores(scores, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def attack_metrics(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, Any]:
    """AUC (+CI) and TPR at 1% / 0.1% FPR (+CI, or null with the reason) for one attack."""
    s, y = _labels_scores(scores, labels)
    auc, ci = bootstrap_auc(s, y, n_boot=n_boot, level=level, seed=seed)
    out: dict[str, Any] = {
        "auc": auc,
        "auc_ci": ci,
        "n_members": int(y.sum()),
        "n_nonmembers": int((~y).sum()),
    }
    for key, fpr in FPR_LEVELS.items():
        res = bootstrap_tpr_at_fpr(
            s,
            y,
            fpr,
            n_boot=n_boot,
            level=level,
            seed=seed,
            min_false_positives=min_false_positives,
        )
        out[key] = res["value"]
        out[f"{key}_ci"] = res["ci"]
        if res["reason"]:
            out[f"{key}_reason"] = res["reason"]
    return out


def _group_masks(
    frame: pd.DataFrame, column: str | tuple[str, ...], strata: Sequence[str]
) -> Iterable[tuple[str, np.ndarray]]:
    """(value label, mask) per group: members with that value vs the matching non-members.

    A column in ``strata`` (a property of the text, such as ``kind``) restricts the non-members to
    the same value; other columns (``count``, ``phase``: properties of the insertion, which controls
    do not have) compare the group's members with every non-member of the members' strata.
    """
    cols = (column,) if isinstance(column, str) else tuple(column)
    if any(c not in frame.columns for c in cols):
        return
    member = frame["member"].to_numpy(bool)
    values = frame.loc[member, list(cols)].drop_duplicates().sort_values(list(cols))
    for _, row in values.iterrows():
        m_mask = member.copy()
        for c in cols:
            m_mask &= (frame[c] == row[c]).to_numpy()
        n_mask = ~member
        for c in strata:
            if c in frame.columns:
                allowed = frame.loc[m_mask, c].unique()
                n_mask &= frame[c].isin(allowed).to_numpy()
        label = ",".join(str(row[c]) for c in cols)
        yield label, m_mask | n_mask


def by_group_metrics(
    frame: pd.DataFrame,
    attacks: Sequence[str],
    groups: Sequence[str | tuple[str, ...]],
    *,
    strata: Sequence[str] = ("kind",),
    n_boot: int = 1000,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Metrics per attack per group column per value: ``{attack: {group: {value: metrics}}}``.

    ``frame`` has one row per text with a boolean ``member`` column, one column per attack and the
    group columns. Groups with no non-members to compare against are skipped.
    """
    out: dict[str, dict] = {a: {} for a in attacks}
    for g in groups:
        name = g if isinstance(g, str) else ",".join(g)
        for label, mask in _group_masks(frame, g, strata):
            sub = frame[mask]
            y = sub["member"].to_numpy(bool)
            if y.all() or not y.any():
                continue
            for a in attacks:
                out[a].setdefault(name, {})[label] = attack_metrics(
                    sub[a].to_numpy(float), y, n_boot=n_boot, seed=seed,
                    min_false_positives=min_false_positives,
                )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------- inputs
def prepare_texts(
    lm: LM,
    texts: Sequence[str],
    members: Sequence[bool],
    *,
    text_ids: Sequence[str] | None = None,
    char_spans: Sequence[tuple[int, int] | None] | None = None,
    groups: Sequence[dict[str, Any]] | None = None,
) -> list[MIAText]:
    """Tokenize texts and map optional character spans ``[start, end)`` to token spans.

    A span covers every token overlapping its characters; a span beginning at the first token
    starts at the second (the first has no context to be predicted from). Texts longer than the
    context are cut to it, which must keep the span.
    """
    n = len(texts)
    ids = list(text_ids) if text_ids is not None else [f"text-{i}" for i in range(n)]
    spans = list(char_spans) if char_spans is not None else [None] * n
    grp = list(groups) if groups is not None else [{} for _ in range(n)]
    ctx = lm.context_length
    out = []
    for text, member, tid, span, g in zip(texts, members, ids, spans, grp):
        enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=span is not None)
        tokens = list(enc["input_ids"])
        if len(tokens) < 2:
            raise RotelabError(
                f"text {tid!r} has {len(tokens)} token(s); membership scores need at least 2"
            )
        if span is None:
            t0, t1 = 1, min(len(tokens), ctx)
        else:
            c0, c1 = int(span[0]), int(span[1])
            if not 0 <= c0 < c1 <= len(text):
                raise RotelabError(
                    f"text {tid!r}: span [{c0}, {c1}) is outside the text ({len(text)} characters); "
                    "give 0 <= span_char_start < span_char_end <= length"
                )
            offsets = enc["offset_mapping"]
            t0 = next(i for i, (_, e) in enumerate(offsets) if e > c0)
            t1 = next((i for i, (b, _) in enumerate(offsets) if b >= c1), len(tokens))
            t0 = max(t0, 1)
            if t1 <= t0:
                raise RotelabError(
                    f"text {tid!r}: span [{c0}, {c1}) covers only the first token, which cannot be "
                    "scored; widen the span"
                )
        out.append(_fit_context(MIAText(tid, tokens, (t0, t1), bool(member), dict(g)), ctx))
    return out


def _fit_context(item: MIAText, ctx: int) -> MIAText:
    if item.span[1] > ctx:
        raise RotelabError(
            f"text {item.text_id!r}: its span ends at token {item.span[1]}, beyond the model's "
            f"context of {ctx} tokens; choose an earlier span or shorter text"
        )
    item.tokens = list(item.tokens[:ctx])
    return item


def _check_token_span(item: MIAText) -> None:
    s, e = item.span
    if not 1 <= s < e <= len(item.tokens):
        raise RotelabError(
            f"text {item.text_id!r}: token span [{s}, {e}) is outside the text "
            f"({len(item.tokens)} tokens); spans need 1 <= start < end <= length"
        )


def _ledger_texts(ledger: pd.DataFrame, span_mode: SpanMode, ctx: int) -> list[MIAText]:
    """Members (count >= 1) and same-kind controls (count 0) of an organism ledger."""
    led = ledger
    member_kinds = set(led.loc[led["count"] >= 1, "kind"])
    control_kinds = set(led.loc[led["count"] == 0, "kind"])
    kinds = sorted(member_kinds & control_kinds)
    if not kinds:
        raise RotelabError("the organism ledger has no kind with both members and count-0 controls")
    out = []
    for row in led[led["kind"].isin(kinds)].itertuples(index=False):
        tokens = list(row.tokens)
        sensitive = span_mode is SpanMode.sensitive or (
            span_mode is SpanMode.auto and row.kind != "passage"
        )
        span = (max(1, int(row.span_start)), int(row.span_end)) if sensitive else (1, len(tokens))
        if span[1] > ctx:
            span = (span[0], ctx) if not sensitive else span
        groups = {"count": int(row.count), "phase": str(row.phase), "kind": str(row.kind)}
        item = MIAText(str(row.item_id), tokens, span, row.count >= 1, groups)
        _check_token_span(item)
        out.append(_fit_context(item, ctx))
    return out


def _read_texts(
    path: str | os.PathLike, role: str, field_name: str, errors: str, corpus_format: str
):
    from rotelab.data import read_corpus

    docs = list(read_corpus(path, field=field_name, errors=errors, corpus_format=corpus_format))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise RotelabError(
            f"the {role} input {path} holds no non-empty texts; give a file or directory of texts"
        )
    return docs


def _doc_span(doc) -> tuple[int, int] | None:
    m = doc.meta
    if m.get("span_char_start") is None and m.get("span_char_end") is None:
        return None
    if m.get("span_char_start") is None or m.get("span_char_end") is None:
        raise RotelabError(f"text {doc.doc_id!r}: give both span_char_start and span_char_end")
    return int(m["span_char_start"]), int(m["span_char_end"])


# ---------------------------------------------------------------------------------- the API
@dataclass
class MIAConfig:
    """Arguments of :func:`mia` (recorded in the run's config.json).

    Attributes:
        attacks: which attacks (default: all that the inputs allow).
        k: Min-K% / Min-K%++ fraction.
        span: organism items: which tokens are scored (see :class:`SpanMode`).
        bootstrap: bootstrap replicates for every CI (0: no CIs).
        min_false_positives: TPR at FPR α needs ``ceil(min_false_positives / α)`` non-members.
        neighbours: neighbours per text for the neighbourhood attack.
        neighbour_fraction: share of words replaced per neighbour.
        recall_prefix_tokens: length of the ReCaLL non-member prefix.
        exposure: compute Secret Sharer exposure for organism secrets.
        exposure_samples: candidates sampled per secret when the space is too large to enumerate.
        exposure_max_exact: enumerate candidate spaces up to this size.
        blind: run the model-free blind baseline.
        seed: seeds bootstrap, neighbours, exposure sampling and the blind baseline's folds.
    """

    attacks: list[Attack] | None = None
    k: float = 0.2
    span: SpanMode = SpanMode.auto
    bootstrap: int = 1000
    min_false_positives: int = 5
    neighbours: int = 8
    neighbour_fraction: float = 0.15
    recall_prefix_tokens: int = 32
    exposure: bool = True
    exposure_samples: int = 1000
    exposure_max_exact: int = 20_000
    blind: bool = True
    seed: int = 0
    batch_size: int = 32


_GROUPS: list[str | tuple[str, ...]] = ["count", "phase", "kind", ("kind", "count")]


def mia(
    model: str | os.PathLike | None = None,
    *,
    members: str | os.PathLike | None = None,
    nonmembers: str | os.PathLike | None = None,
    reference_model: str | os.PathLike | None = None,
    recall_prefix_file: str | os.PathLike | None = None,
    config: MIAConfig | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    allow_pickle: bool = False,
    field: str = "text",
    errors: str = "strict",
    corpus_format: str = "auto",
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run membership inference and write a run directory; what ``rotelab mia`` does.

    With neither ``members`` nor ``nonmembers`` the inputs come from an organism's ledger (the
    default organism, or ``model`` when it is an organism directory): members are items inserted
    at least once, non-members the count-0 items of the same kinds. Otherwise both must be files
    or directories of texts (JSONL/Parquet fields ``span_char_start``/``span_char_end`` restrict
    scoring to a character span; other fields such as ``count`` become groups).

    Writes ``results/scores`` (one row per text and attack), ``results/texts``, ``results/roc``,
    ``results/exposure`` (organism secrets), ``results/blind`` and ``summary.json`` with, per
    attack, ``auc``, ``auc_ci``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr`` and ``by_group``.

    Returns:
        The run directory and the summary.
    """
    from rotelab.measure.blind import BlindBaseline
    from rotelab.runs import Run

    cfg = config or MIAConfig()
    _validate_config(cfg)
    check_load_options(device, dtype)
    if (members is None) != (nonmembers is None):
        raise RotelabError(
            "give both --members and --nonmembers, or neither to use the organism's ledger"
        )
    organism = None
    if members is None:
        organism = _organism_for(model)
        model = organism.path
    else:
        member_docs = _read_texts(members, "members", field, errors, corpus_format)
        nonmember_docs = _read_texts(nonmembers, "non-members", field, errors, corpus_format)
    requested = list(cfg.attacks) if cfg.attacks else None
    arguments = {
        "model": model, "members": members, "nonmembers": nonmembers,
        "reference_model": reference_model, "recall_prefix_file": recall_prefix_file,
        "device": device, "dtype": dtype, "field": field, "errors": errors, "format": corpus_format,
        **{k: v for k, v in asdict(cfg).items() if k != "batch_size"},
    }  # fmt: skip
    inputs = (model, members, nonmembers, reference_model, recall_prefix_file)
    run = Run.create(
        out, "mia", arguments, resume=resume, force=force, device=device, inputs=inputs
    )
    with run:
        from rotelab.options import LoadOptions
        from rotelab.pipelines.inputs import load_model

        lm = load_model(model, LoadOptions(device, dtype, allow_pickle))
        ctx = lm.context_length
        if organism is not None:
            items = _ledger_texts(organism.ledger, cfg.span, ctx)
            raw_texts = {r.item_id: r.text for r in organism.ledger.itertuples(index=False)}
            background = organism.heldout_docs()
            vocab_texts = organism.train_docs()[:2000] + background
        else:
            docs = [(d, True) for d in member_docs] + [(d, False) for d in nonmember_docs]
            seen: set[str] = set()
            ids = []
            for d, is_member in docs:
                tid = ("m:" if is_member else "n:") + d.doc_id
                if tid in seen:
                    raise RotelabError(f"duplicate text id {tid!r}; ids must be unique")
                seen.add(tid)
                ids.append(tid)
            items = prepare_texts(
                lm,
                [d.text for d, _ in docs],
                [m for _, m in docs],
                text_ids=ids,
                char_spans=[_doc_span(d) for d, _ in docs],
                groups=[
                    {g: d.meta[g] for g in ("count", "phase", "kind") if g in d.meta}
                    for d, _ in docs
                ],
            )
            raw_texts = {tid: d.text for tid, (d, _) in zip(ids, docs)}
            background = None
            vocab_texts = list(raw_texts.values())
        n_mem = sum(it.member for it in items)
        if n_mem == 0:
            raise RotelabError("there are no members to score; give at least one member text")
        if n_mem == len(items):
            raise RotelabError("there are no non-members (controls); give at least one non-member")

        ref = None
        if reference_model is not None:
            ref = LM.load(reference_model, device=device, dtype=dtype, allow_pickle=allow_pickle)
            check_same_tokenizer(lm, ref, items)
        prefix_texts = background
        if recall_prefix_file is not None:
            prefix_texts = [
                d.text for d in _read_texts(
                    recall_prefix_file, "ReCaLL prefix", field, errors, corpus_format
                )
            ]
        attacks, skipped = _choose_attacks(requested, ref is not None, prefix_texts is not None)

        texts_frame = pd.DataFrame(
            [
                {"text_id": it.text_id, "member": it.member, "span_start": it.span[0],
                 "span_end": it.span[1], "n_tokens": len(it.tokens), **it.groups}
                for it in items
            ]
        )  # fmt: skip
        run.write_table("texts", texts_frame)
        ids = [it.text_id for it in items]

        def part(key: str, compute: Callable[[], dict[str, np.ndarray]]) -> None:
            if run.has_part("scores", key):
                return
            cols = compute()
            long = pd.concat(
                [pd.DataFrame({"text_id": ids, "attack": a, "score": np.asarray(v, float)})
                 for a, v in cols.items()],
                ignore_index=True,
            )  # fmt: skip
            run.write_part("scores", key, long)

        kw = {"batch_size": cfg.batch_size, "progress": progress}
        one_pass = [a for a in attacks if a in LIKELIHOOD_ATTACKS]
        if one_pass:
            part("likelihood", lambda: _one_pass_columns(lm, items, cfg.k, one_pass, kw))
        if Attack.reference in attacks:
            part("reference", lambda: {"reference": reference_scores(lm, ref, items, **kw)})
        if Attack.neighbourhood in attacks:
            gen = WordSubstitution.from_texts(vocab_texts, cfg.neighbour_fraction)
            part(
                "neighbourhood",
                lambda: {
                    "neighbourhood": neighbourhood_scores(
                        lm, items, gen, n_neighbours=cfg.neighbours, seed=cfg.seed, **kw
                    )
                },
            )
        if Attack.recall in attacks:
            prefix = recall_prefix(lm, prefix_texts, cfg.recall_prefix_tokens)
            part("recall", lambda: {"recall": recall_scores(lm, items, prefix, **kw)})
        if Attack.grad_norm in attacks:
            part("grad_norm", lambda: {"grad_norm": grad_norm_scores(lm, items, progress=progress)})

        scores = run.read_table("scores")
        wide = scores.pivot(index="text_id", columns="attack", values="score")
        frame = texts_frame.join(wide, on="text_id")
        names = [a.value for a in attacks]
        y = frame["member"].to_numpy(bool)

        summary: dict[str, Any] = {
            "model": str(model),
            "n_members": int(y.sum()),
            "n_nonmembers": int((~y).sum()),
            "span": cfg.span.value if organism is not None else "file",
            "k": cfg.k,
            "bootstrap": cfg.bootstrap,
            "tpr_rule": (
                f"TPR at FPR a is reported only with >= ceil({cfg.min_false_positives}/a) "
                "non-members"
            ),
            "higher_is_better": {"scores": HIGHER_IS_BETTER, "metrics": METRIC_HIGHER_IS_BETTER},
            "skipped_attacks": skipped,
            "attacks": {},
        }
        groups = [
            g
            for g in _GROUPS
            if all(c in frame.columns for c in ((g,) if isinstance(g, str) else g))
        ]
        per_group = by_group_metrics(
            frame, names, groups, n_boot=cfg.bootstrap, seed=cfg.seed,
            min_false_positives=cfg.min_false_positives,
        )  # fmt: skip
        roc_rows = []
        for a in names:
            s = frame[a].to_numpy(float)
            m = attack_metrics(
                s, y, n_boot=cfg.bootstrap, seed=cfg.seed,
                min_false_positives=cfg.min_false_positives,
            )  # fmt: skip
            m["by_group"] = per_group.get(a, {})
            summary["attacks"][a] = m
            roc_rows.append(roc_points(s, y).assign(attack=a, group="all", value="all"))
            for g in groups:
                name = g if isinstance(g, str) else ",".join(g)
                for label, mask in _group_masks(frame, g, ("kind",)):
                    ym = y[mask]
                    if ym.all() or not ym.any():
                        continue
                    roc_rows.append(
                        roc_points(s[mask], ym).assign(attack=a, group=name, value=label)
                    )
        run.write_table("roc", pd.concat(roc_rows, ignore_index=True))

        if cfg.blind:
            # The blind baseline reads the whole text: a shift anywhere in it biases the split.
            blind_texts = [raw_texts.get(it.text_id, lm.decode(it.tokens)) for it in items]
            strata = frame["kind"].tolist() if "kind" in frame.columns else None
            bb = BlindBaseline(n_boot=cfg.bootstrap, seed=cfg.seed).fit(blind_texts, y, strata)
            run.write_table(
                "blind", pd.DataFrame({"text_id": ids, "member": y, "score": bb.oof_scores_})
            )
            summary["blind"] = bb.summary()
            if bb.flagged_:
                summary["warnings"] = [bb.warning()]

        if organism is not None and cfg.exposure:
            summary["exposure"] = _organism_exposure(lm, organism, cfg, run, progress)
        run.write_summary(summary)
    return run.path, summary


def _one_pass_columns(lm, items, k, attacks, kw) -> dict[str, np.ndarray]:
    frame = likelihood_scores(lm, items, k=k, **kw)
    return {a.value: frame[a.value].to_numpy() for a in attacks}


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a short text table: AUC [CI] overall and by duplication count."""
    attacks = summary["attacks"]
    counts = sorted(
        {c for a in attacks.values() for c in a["by_group"].get("count", {})}, key=float
    )
    head = f"{'attack':<14}{'AUC [95% CI]':<22}" + "".join(f"{'n=' + c:>8}" for c in counts)
    lines = [f"members {summary['n_members']}, non-members {summary['n_nonmembers']}", head]
    for name, m in attacks.items():
        ci = m["auc_ci"]
        cell = f"{m['auc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        by = m["by_group"].get("count", {})
        lines.append(
            f"{name:<14}{cell:<22}"
            + "".join(f"{by[c]['auc']:>8.3f}" if c in by else f"{'-':>8}" for c in counts)
        )
    one = next(iter(attacks.values()), {})
    if one.get("tpr_at_1pct_fpr") is None and one.get("tpr_at_1pct_fpr_reason"):
        lines.append(f"TPR at 1% FPR refused: {one['tpr_at_1pct_fpr_reason']}")
    if "blind" in summary:
        b = summary["blind"]
        lines.append(f"blind baseline AUC {b['auc']:.3f}" + (" (FLAGGED)" if b["flagged"] else ""))
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    if summary.get("exposure"):
        e = summary["exposure"]["by_count"]
        lines.append(
            "exposure (mean, bits) by count: "
            + "  ".join(f"{c}: {v['mean']:.1f}" for c, v in e.items())
            + f"  (max {summary['exposure']['log2_space']:.1f})"
        )
    return "\n".join(lines)


def _validate_config(cfg: MIAConfig) -> None:
    _check_k(cfg.k)
    if cfg.bootstrap < 0:
        raise RotelabError("--bootstrap must be >= 0")
    if cfg.batch_size < 1:
        raise RotelabError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.neighbours < 1:
        raise RotelabError(f"--neighbours must be >= 1, got {cfg.neighbours}")
    if cfg.min_false_positives < 1:
        raise RotelabError("min_false_positives must be >= 1")
    try:
        cfg.span = SpanMode(cfg.span)
    except ValueError:
        raise RotelabError(f"--span must be auto, full or sensitive, not {cfg.span!r}") from None
    if cfg.attacks:
        try:
            cfg.attacks = [Attack(a) for a in cfg.attacks]
        except ValueError as exc:
            raise RotelabError(f"{exc}; attacks are {', '.join(a.value for a in Attack)}") from None


def _choose_attacks(
    requested: list[Attack] | None, has_ref: bool, has_prefix: bool
) -> tuple[list[Attack], dict[str, str]]:
    needs = {
        Attack.reference: (has_ref, "needs --reference-model (same tokenizer as the target)"),
        Attack.recall: (has_prefix, "needs non-member prefix texts (--recall-prefix)"),
    }
    if requested is not None:
        for a in requested:
            ok, why = needs.get(a, (True, ""))
            if not ok:
                raise RotelabError(f"attack {a.value} {why}")
        return list(dict.fromkeys(requested)), {}
    chosen, skipped = [], {}
    for a in Attack:
        ok, why = needs.get(a, (True, ""))
        if ok:
            chosen.append(a)
        else:
            skipped[a.value] = why
    return chosen, skipped


def _organism_for(model):
    from rotelab.pipelines.inputs import organism_of

    org = organism_of(model)
    if org is not None:
        return org
    raise RotelabError(
        f"{model} is not an organism (no ledger), so give --members and --nonmembers texts"
    )


def _organism_exposure(lm: LM, organism, cfg: MIAConfig, run, progress: bool) -> dict[str, Any]:
    from rotelab.measure.exposure import exposure_table

    led = organism.ledger
    secrets = led[led["kind"] == "secret"]
    if secrets.empty:
        return {}
    if not run.has_part("exposure", "secrets"):
        table = exposure_table(lm, **_exposure_inputs(lm, secrets, cfg), progress=progress)
        table = table.merge(secrets[["item_id", "count", "phase"]], on="item_id")
        run.write_part("exposure", "secrets", table)
    table = run.read_table("exposure")
    by_count = table.groupby("count")["exposure"].agg(["mean", "median", "min", "max", "size"])
    return {
        "method": sorted(table["method"].unique().tolist()),
        "log2_space": float(table["log2_space"].iloc[0]),
        "higher_is_better": False,
        "note": "exposure = log2|R| - log2 rank; higher = the secret leaks more (worse for privacy)",
        "by_count": {
            str(c): {k: float(v) for k, v in row.items()} for c, row in by_count.iterrows()
        },
    }


def _exposure_inputs(lm: LM, secrets: pd.DataFrame, cfg: MIAConfig) -> dict[str, Any]:
    """:func:`exposure_table`'s arguments for the organism's ledger rows of kind secret."""
    return {
        "item_ids": secrets["item_id"].tolist(),
        "prefixes": secrets["prefix_tokens"].tolist(),
        "secrets": secrets["suffix_tokens"].tolist(),
        "alphabets": [_alphabet_tokens(lm, a) for a in secrets["secret_alphabet"]],
        "n_samples": cfg.exposure_samples,
        "max_exact": cfg.exposure_max_exact,
        "seed": cfg.seed,
        "batch_size": max(cfg.batch_size, 256),
    }


def _alphabet_tokens(lm: LM, alphabet: str) -> list[int]:
    # The organism writes each secret character after one space, as exactly one token.
    tokens = []
    for ch in alphabet:
        ids = lm.encode(" " + ch)
        if len(ids) != 1:
            raise RotelabError(
                f"secret character {ch!r} is not one token in this tokenizer; exposure needs "
                "one token per secret position"
            )
        tokens.append(ids[0])
    return tokens
