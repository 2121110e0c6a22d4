"""Membership-inference attacks, one registered function each (:data:`rotelab.registry.ATTACKS`).

An attack maps :class:`AttackInputs` to one score per text, shape (n,), with one sign convention:
**higher = more likely a member** (registered as its direction in :data:`rotelab.registry.METRICS`).
Its registration says what it needs beyond the target model and the texts (``needs``, a subset of
:data:`NEEDS`) and whether it is computed from the one teacher-forced pass that all such attacks
share (``one_pass``: :meth:`rotelab.lm.LM.score` with ``moments=True``, so adding Min-K%++ to LOSS
costs no second forward pass and no (batch x length x vocab) tensor).

Adding an attack is one function::

    @register_attack("my_attack", needs=("reference",))
    def my_attack(inputs: AttackInputs) -> np.ndarray:
        ...  # (n,) scores, higher = member

Attacks and where they come from:

- ``loss``: mean log-likelihood (Yeom et al. 2018, "Privacy risk in machine learning").
- ``zlib``: log-likelihood divided by the zlib-compressed size of the scored text (Carlini et al.
  2021, "Extracting training data from large language models").
- ``min_k``: mean of the k% lowest token log-probs (Shi et al. 2024, "Detecting pretraining data
  from large language models").
- ``min_k_pp``: Min-K%++, the same on z_t = (log p(x_t) - mu_t) / sigma_t with mu_t, sigma_t^2 the
  mean and variance of log p over the full vocabulary under p (Zhang et al. 2024, "Min-K%++").
- ``reference``: NLL under a reference model minus NLL under the target (Carlini et al. 2021).
- ``neighbourhood``: mean NLL of perturbed neighbours minus NLL of the text (Mattern et al. 2023;
  :mod:`rotelab.measure.mia.neighbours`).
- ``recall``: LL(x | non-member prefix) / LL(x) (Xie et al. 2024, "ReCaLL"); members lose more
  likelihood when conditioned on unrelated text, so the ratio is larger for them.
- ``grad_norm``: minus the norm of the parameter gradient of the NLL (members sit nearer a
  minimum; as in mimir, Duan et al. 2024, "Do membership inference attacks work on LLMs?").
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, TokenScores, progress_bar
from rotelab.measure.mia._scoring import loss_score, mean_nll, span_nll, span_scores
from rotelab.measure.mia.inputs import MIAText
from rotelab.measure.mia.neighbours import NeighbourGenerator, neighbourhood_scores
from rotelab.registry import ATTACKS, register_metric

__all__ = [
    "NEEDS",
    "AttackInputs",
    "check_k",
    "check_recall_prefix_tokens",
    "check_same_tokenizer",
    "grad_norm_scores",
    "likelihood_scores",
    "loss_score",
    "min_k_pp_score",
    "min_k_score",
    "recall_prefix",
    "recall_scores",
    "reference_scores",
    "register_attack",
    "zlib_score",
]

#: What an attack may need beyond the target model and the texts: a reference model with the
#: same tokenizer, a neighbour generator, parameter gradients, a non-member ReCaLL prefix.
NEEDS = frozenset({"reference", "neighbours", "gradients", "recall_prefix"})


def register_attack(
    name: str, *, needs: Iterable[str] = (), one_pass: bool = False, description: str = ""
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(inputs: AttackInputs) -> (n,) scores`` as attack ``name``.

    Args:
        name: the attack's name (``--attacks``, summary keys, the ``attack`` column).
        needs: a subset of :data:`NEEDS`; where an input is missing the attack is skipped (or
            refused when asked for by name).
        one_pass: the attack only reads :attr:`AttackInputs.token_scores`, the pass shared by all
            such attacks.
        description: one line for summaries and reports.

    The score's direction (higher = member, the one convention) is registered under ``name`` in
    :data:`rotelab.registry.METRICS`; take both out with ``ATTACKS.remove`` and ``METRICS.remove``.
    """
    needs = frozenset(needs)
    if not needs <= NEEDS:
        raise ValueError(f"attack {name!r}: unknown needs {sorted(needs - NEEDS)}; use {NEEDS}")

    def deco(fn: Callable) -> Callable:
        ATTACKS.add(name, fn, needs=needs, one_pass=one_pass, description=description)
        register_metric(name, higher_is_better=True, description=description)
        return fn

    return deco


@dataclass
class AttackInputs:
    """Everything an attack may read; those in :data:`NEEDS` are ``None`` where not available.

    Attributes:
        lm: the target model.
        items: the texts with their scored spans.
        k: fraction of lowest tokens for Min-K% and Min-K%++.
        reference: a model with the target's tokenizer (need ``reference``).
        neighbours: makes neighbours of a span's text (need ``neighbours``).
        n_neighbours: neighbours per text.
        recall_prefix: non-member tokens for ReCaLL (need ``recall_prefix``).
        seed: seeds any randomness (neighbours are seeded per text id).
        batch_size, progress: for :meth:`rotelab.lm.LM.score`.
    """

    lm: LM
    items: Sequence[MIAText]
    k: float = 0.2
    reference: LM | None = None
    neighbours: NeighbourGenerator | None = None
    n_neighbours: int = 8
    recall_prefix: Sequence[int] | None = None
    seed: int = 0
    batch_size: int = 32
    progress: bool = False

    @property
    def batching(self) -> dict:
        return {"batch_size": self.batch_size, "progress": self.progress}

    @functools.cached_property
    def token_scores(self) -> list[TokenScores]:
        """The one teacher-forced pass over every span, with moments (computed on first use)."""
        return span_scores(self.lm, self.items, moments=True, **self.batching)

    @functools.cached_property
    def span_texts(self) -> list[str]:
        """Each span decoded."""
        return [self.lm.decode(it.tokens[it.span[0] : it.span[1]]) for it in self.items]


# ------------------------------------------------------------------------ per-text statistics
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


def check_k(k: float) -> None:
    """One line for a Min-K% fraction outside (0, 1]."""
    if not 0 < k <= 1:
        raise RotelabError(f"k for Min-K% must be in (0, 1], got {k}; e.g. 0.2 for 20%")


# ----------------------------------------------------------------- the one-pass attacks
@register_attack("loss", one_pass=True, description="mean log-likelihood of the span")
def loss_attack(inputs: AttackInputs) -> np.ndarray:
    return np.array([loss_score(sc.logprobs) for sc in inputs.token_scores])


@register_attack("zlib", one_pass=True, description="log-likelihood / zlib size of the span")
def zlib_attack(inputs: AttackInputs) -> np.ndarray:
    pairs = zip(inputs.token_scores, inputs.span_texts)
    return np.array([zlib_score(sc.logprobs, text) for sc, text in pairs])


@register_attack("min_k", one_pass=True, description="mean of the k% lowest token log-probs")
def min_k_attack(inputs: AttackInputs) -> np.ndarray:
    check_k(inputs.k)
    return np.array([min_k_score(sc.logprobs, inputs.k) for sc in inputs.token_scores])


@register_attack("min_k_pp", one_pass=True, description="Min-K% of vocabulary-normalised log-probs")
def min_k_pp_attack(inputs: AttackInputs) -> np.ndarray:
    check_k(inputs.k)
    return np.array(
        [min_k_pp_score(sc.logprobs, sc.mu, sc.sigma2, inputs.k) for sc in inputs.token_scores]
    )


def likelihood_scores(
    lm: LM,
    items: Sequence[MIAText],
    *,
    k: float = 0.2,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Every registered one-pass attack (LOSS, zlib, Min-K%, Min-K%++) from one pass.

    Args:
        lm: the target model.
        items: texts with their scored spans.
        k: fraction of lowest tokens for Min-K% and Min-K%++.

    Returns:
        A frame with one row per item (input order), one column per one-pass attack (higher =
        member) plus ``nll`` and ``n_scored`` (tokens in the span).
    """
    check_k(k)
    inputs = AttackInputs(lm, items, k=k, batch_size=batch_size, progress=progress)
    frame = pd.DataFrame({a: ATTACKS[a].fn(inputs) for a in ATTACKS.names(one_pass=True)})
    frame["nll"] = [-loss_score(sc.logprobs) for sc in inputs.token_scores]
    frame["n_scored"] = [len(sc.logprobs) for sc in inputs.token_scores]
    return frame


# ----------------------------------------------------------------------------- reference
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
    kw = {"batch_size": batch_size, "progress": progress}
    return span_nll(ref, items, **kw) - span_nll(lm, items, **kw)


@register_attack(
    "reference", needs=("reference",), description="NLL under a reference model - NLL under target"
)
def reference_attack(inputs: AttackInputs) -> np.ndarray:
    return reference_scores(inputs.lm, inputs.reference, inputs.items, **inputs.batching)


@register_attack(
    "neighbourhood", needs=("neighbours",), description="mean NLL of neighbours - NLL of the span"
)
def neighbourhood_attack(inputs: AttackInputs) -> np.ndarray:
    return neighbourhood_scores(
        inputs.lm, inputs.items, inputs.neighbours, n_neighbours=inputs.n_neighbours,
        seed=inputs.seed, **inputs.batching,
    )  # fmt: skip


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
    check_recall_room(lm, items, prefix)
    room = lm.context_length - len(prefix)
    plain, cond, s_plain, s_cond = [], [], [], []
    for it in items:
        start, end = it.span
        end = min(end, room)
        plain.append(it.tokens[:end])
        s_plain.append(start)
        cond.append(prefix + list(it.tokens[:end]))
        s_cond.append(start + len(prefix))
    kw = {"batch_size": batch_size, "progress": progress}
    return mean_nll(lm, cond, s_cond, **kw) / mean_nll(lm, plain, s_plain, **kw)


def check_recall_room(lm: LM, items: Sequence[MIAText], prefix_tokens: Sequence[int]) -> None:
    """One line unless every text keeps part of its span once the prefix is prepended (checked
    before any attack runs, so a run is refused before it writes scores)."""
    if not prefix_tokens:
        raise RotelabError("ReCaLL needs a non-empty non-member prefix")
    room = lm.context_length - len(prefix_tokens)
    for it in items:
        if min(it.span[1], room) <= it.span[0]:
            raise RotelabError(
                f"text {it.text_id!r}: no room for the span after a {len(prefix_tokens)}-token "
                f"ReCaLL prefix in a {lm.context_length}-token context; use a shorter "
                "--recall-prefix-tokens"
            )


def check_recall_prefix_tokens(n_tokens: int) -> None:
    """One line for a ReCaLL prefix length below 1."""
    if n_tokens < 1:
        raise RotelabError(f"--recall-prefix-tokens must be >= 1, got {n_tokens}")


def recall_prefix(lm: LM, nonmember_texts: Sequence[str], n_tokens: int) -> list[int]:
    """The last ``n_tokens`` of non-member texts joined by end-of-text, ending with end-of-text."""
    check_recall_prefix_tokens(n_tokens)
    eos = lm.tokenizer.eos_token_id
    ids: list[int] = []
    for text in nonmember_texts:
        ids += lm.encode(text) + ([eos] if eos is not None else [])
        if len(ids) >= n_tokens:
            break
    if not ids:
        raise RotelabError("the ReCaLL prefix texts are empty")
    return ids[-n_tokens:]


@register_attack(
    "recall", needs=("recall_prefix",), description="LL given a non-member prefix / LL alone"
)
def recall_attack(inputs: AttackInputs) -> np.ndarray:
    return recall_scores(inputs.lm, inputs.items, inputs.recall_prefix, **inputs.batching)


# ------------------------------------------------------------------------------ gradient norm
def grad_norm_scores(lm: LM, items: Sequence[MIAText], *, progress: bool = False) -> np.ndarray:
    """Minus the L2 norm of d NLL(span) / d theta over all trainable parameters, shape (n,).

    One forward and backward pass per text (per-example gradients cannot be batched without
    per-sample-gradient machinery); gradients are taken with ``torch.autograd.grad`` so the
    model's ``.grad`` buffers are never touched.
    """
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


@register_attack(
    "grad_norm", needs=("gradients",), description="minus the norm of the NLL's parameter gradient"
)
def grad_norm_attack(inputs: AttackInputs) -> np.ndarray:
    return grad_norm_scores(inputs.lm, inputs.items, progress=inputs.progress)
