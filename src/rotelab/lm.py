"""One object through which every model call in rotelab flows.

:class:`LM` wraps a Hugging Face causal LM and its tokenizer. Batching, padding, device, dtype and
the memory-bounded softmax live here, so every method gets them the same way:

- :meth:`LM.score` runs one teacher-forced pass over token sequences and returns, per target token,
  the log-probability, the argmax and its agreement with the true token, the top-1/top-2 logit
  margin and (optionally) the mean and variance of log p over the full vocabulary (Min-K%++). The
  softmax is done in vocabulary chunks on the target positions only, so (batch x length x vocab)
  never sits in memory.
- :meth:`LM.score_continuations` scores many continuations of one prefix from its KV cache.
- :meth:`LM.generate` decodes greedily (or samples) with the KV cache.
- :class:`Sampler` (greedy, temperature, top-k, top-p) is the one definition of sampling, used by
  decoding (:meth:`Sampler.pick`) and by scoring (log P_sampler(true token)).
- :meth:`LM.hooks` installs functions on named hook points (``blocks.3.mlp_out``; see
  :meth:`LM.hook_points`) for one ``with`` block: to read activations or to replace them.
- :meth:`LM.hidden_states` returns residual-stream activations at chosen layers.
- :meth:`LM.linear_layers` presents ``nn.Linear`` and GPT-2's ``Conv1D`` alike (weight as out x in).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import math
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rotelab.errors import RotelabError
from rotelab.machine import (
    Precision,
    configure_threads,
    resolve_device,
    resolve_precision,
    share_threads,
    warn_if_emulated,
)
from rotelab.sources import (
    NAMED_MODELS,
    check_checkpoint_dir,
    check_weight_files,
    has_safetensors,
    refused_pickle,
    resolve_source,
)
from rotelab.steered import SteeringSpec, is_steering_dir

__all__ = [
    "GREEDY",
    "block_outputs",
    "HookFn",
    "LM",
    "Sampler",
    "cache_rows",
    "fused_llama_weights",
    "lean_llama",
    "check_load_options",
    "keep_freed_memory",
    "LinearLayer",
    "LOGIT_BLOCK",
    "default_vocab_chunk",
    "encode_texts",
    "length_buckets",
    "pad_batch",
    "progress_bar",
    "rms_norm",
    "transformer_blocks",
    "TokenScores",
    "NAMED_MODELS",
    "SHARED_CACHE_BYTES",
    "resolve_dtype",
    "resolve_device",
]


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a model is loaded in.

    ``"auto"``: exact fp32 on the CPU, whatever the CPU (verdicts are then exact; ``extract
    --dtype bfloat16 --recheck`` is the fast screen), and on a GPU what ``auto`` precision picks
    there (bf16 where supported, unless ``ROTELAB_PRECISION=fp32``). An explicit bf16 on a CPU
    that emulates it works, after one warning line.
    """
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype == "auto":
        bf16 = device.type == "cuda" and resolve_precision("auto", device) is Precision.bf16
        resolved = torch.bfloat16 if bf16 else torch.float32
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise RotelabError(f"unknown dtype {dtype!r}; use one of: auto, float32, bfloat16, float16")
    if resolved == torch.bfloat16:
        warn_if_emulated(device)
    return resolved


def check_load_options(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> None:
    """Fail with one line on a device or dtype this machine cannot give, before any work is done
    (a model load, or the default organism's build, can take minutes)."""
    resolve_dtype(dtype, resolve_device(device))


@dataclass
class TokenScores:
    """Teacher-forced statistics of one sequence's target tokens.

    All arrays have length ``len(sequence) - targets_from``: entry ``i`` describes the prediction of
    token ``targets_from + i`` from the tokens before it.
    """

    logprobs: np.ndarray  # (n,) float32: log p(true token)
    argmax: np.ndarray  # (n,) int64: the greedy choice
    argmax_match: np.ndarray  # (n,) bool: greedy choice == true token
    margin: np.ndarray  # (n,) float32: top-1 minus top-2 logit
    target_gap: (
        np.ndarray
    )  # (n,) float32: top-1 minus the true token's logit (0 where greedy picks it)
    mu: np.ndarray | None = None  # (n,) float32: E_p[log p] over the vocabulary
    sigma2: np.ndarray | None = None  # (n,) float32: Var_p[log p] over the vocabulary
    sampler_logprobs: np.ndarray | None = None  # (n,) float32: log P_sampler(true token)


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """How the next token is chosen: greedy, or drawn at ``temperature`` from the top-k/top-p pool.

    The one definition of sampling: :meth:`LM.generate` picks tokens with :meth:`pick`, and
    :meth:`LM.score` (``sampler=``) reports log P_sampler(true token) under the same rule.
    As in transformers' logits processors, the logits are divided by ``temperature``, then
    ``top_k`` keeps every token whose logit reaches the k-th largest (ties stay in the pool), then
    ``top_p`` keeps the most likely tokens until the probability before them reaches ``top_p``.

    Example:
        >>> lm.generate(prefixes, 32, sampler=Sampler(temperature=0.7, top_k=40))  # doctest: +SKIP
    """

    greedy: bool = False  # the argmax; the other fields are ignored
    temperature: float = 1.0  # > 0
    top_k: int = 0  # 0: the whole vocabulary
    top_p: float = 1.0  # in (0, 1]; 1: no nucleus cut

    def __post_init__(self) -> None:
        if self.greedy:
            return
        if not self.temperature > 0:
            raise RotelabError(f"the sampler's temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise RotelabError(
                f"the sampler's top-k must be >= 0 (0: the whole vocabulary), got {self.top_k}"
            )
        if not 0 < self.top_p <= 1:
            raise RotelabError(f"the sampler's top-p must be in (0, 1], got {self.top_p}")

    def _filtered(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) logits / temperature, -inf outside the top-k/top-p pool."""
        z = logits / self.temperature
        if self.top_k and self.top_k < z.shape[-1]:
            kth = z.topk(self.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, -math.inf)
        if self.top_p < 1:
            ranked, order = z.sort(dim=-1, descending=True)
            p = torch.softmax(ranked, dim=-1)
            cut = (p.cumsum(-1) - p) >= self.top_p  # the mass before a token already reaches p
            z = z.masked_fill(cut.scatter(-1, order, cut), -math.inf)
        return z

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) probabilities of the next token given (N, V) logits (one-hot when greedy)."""
        if self.greedy:
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return torch.softmax(self._filtered(logits), dim=-1)

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) log-probabilities of the next token (-inf outside the pool)."""
        if self.greedy:
            return self.probs(logits).log()
        return torch.log_softmax(self._filtered(logits), dim=-1)

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N,) next tokens for (N, V) logits; draws use ``generator`` (a CPU generator)."""
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = self.probs(logits).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


#: Greedy decoding: :meth:`LM.generate`'s default.
GREEDY = Sampler(greedy=True)


@dataclass
class LinearLayer:
    """A linear map inside the model, with its weight presented as (out, in)."""

    name: str
    module: nn.Module
    kind: str  # "linear" or "conv1d"

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) view of the weight (a transpose view for Conv1D)."""
        w = self.module.weight
        return w.T if self.kind == "conv1d" else w

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def set_weight(self, w: torch.Tensor) -> None:
        """Replace the weight from an (out, in) tensor."""
        with torch.no_grad():
            target = self.module.weight
            target.copy_((w.T if self.kind == "conv1d" else w).to(target.dtype))


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _gated_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))`` with the activation and the product in place (inference)."""
    g = self.gate_proj(x)
    act = self.act_fn
    if isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation":
        a = torch.nn.functional.silu(g, inplace=True)
    else:
        a = act(g)
    return self.down_proj(a.mul_(self.up_proj(x)))


def _is_gated_mlp(module: nn.Module) -> bool:
    """A Llama-style MLP: ``gate_proj``, ``up_proj``, ``down_proj`` linear layers and ``act_fn``.

    Not when a hook watches ``gate_proj``, ``up_proj`` or ``act_fn``: a hook that keeps their
    output would see it overwritten in place. Hooks on the MLP itself (the ``mlp_in``/``mlp_out``
    hook points) and on ``down_proj`` see tensors the in-place operations never write, so they
    keep the fast path.
    """
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    act = getattr(module, "act_fn", None)
    if not (
        type(module).__name__.endswith("MLP")
        and all(isinstance(p, nn.Linear) for p in parts)
        and callable(act)
        and "forward" not in vars(module)
    ):
        return False
    watched = [parts[0], parts[1]] + ([act] if isinstance(act, nn.Module) else [])
    return not any(m._forward_hooks or m._forward_pre_hooks for m in watched)


class _lean_inference:
    """Within ``with``, Llama-style MLPs compute their activation and gate product in place.

    Transformers' MLP allocates a fresh tensor for ``act(gate(x))`` and another for the product
    with ``up(x)``: the two widest activations of the block. In place, the scoring pass is about
    5% faster on this project's CPU, with bit-identical results. Only for passes without autograd
    (``torch.inference_mode``): the in-place ops would corrupt a backward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.mlps = [m for m in model.modules() if _is_gated_mlp(m)]

    def __enter__(self) -> None:
        for m in self.mlps:
            m.forward = _gated_mlp_forward.__get__(m)

    def __exit__(self, *exc) -> None:
        for m in self.mlps:
            vars(m).pop("forward", None)


#: A hook function: gets the activation at its hook point; returns a tensor of the same shape to
#: replace it, or ``None`` to leave it as it is (observe only).
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _holds_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) or _is_conv1d(m) for m in module.modules())


def _transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer blocks: the ``ModuleList`` of modules of one type holding the most
    parameters (``model.layers``, ``transformer.h``, ``gpt_neox.layers``), found by structure."""
    best, size = None, 0
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1:
            n = sum(p.numel() for p in m.parameters())
            if n > size:
                best, size = m, n
    return best


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks in order (found by structure, as :meth:`LM.hook_points`
    finds them): for training-time hooks on a bare model, which an :class:`LM` would put in
    eval mode. Empty when there is no stack of blocks."""
    return list(_transformer_blocks(model) or [])


@contextlib.contextmanager
def block_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, ``model`` is in eval mode and each forward appends every transformer block's
    output hidden states (B, T, D), in block order, to the list it yields; on exit the hooks are
    removed and the model's training mode is restored."""
    captured: list[torch.Tensor] = []

    def keep(module, args, out) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handles = [b.register_forward_hook(keep) for b in transformer_blocks(model)]
    was_training = model.training
    model.eval()
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _block_parts(block: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(attention, MLP) of a block: of its direct children that hold linear layers, the one whose
    class is an attention (``...Attention``) and the one other; ``None`` where it is ambiguous."""
    holders = [c for c in block.children() if _holds_linear(c)]
    attn = [c for c in holders if "attention" in type(c).__name__.lower()]
    rest = [c for c in holders if c not in attn]
    return (attn[0] if len(attn) == 1 else None), (rest[0] if len(rest) == 1 else None)


def _checked(name: str, old: torch.Tensor, new) -> torch.Tensor:
    if not isinstance(new, torch.Tensor) or new.shape != old.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        want = tuple(old.shape)
        raise ValueError(f"the hook on {name} returned {got}; return None or a tensor of {want}")
    return new


def _input_hook(name: str, fn: HookFn):
    """A forward pre-hook giving ``fn`` the input (first positional, or ``hidden_states``)."""

    def hook(module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((_checked(name, args[0], new), *args[1:]), kwargs)
        if "hidden_states" not in kwargs:
            raise RuntimeError(f"hook point {name}: the module was called without an input tensor")
        x = kwargs["hidden_states"]
        new = fn(x)
        return None if new is None else (args, {**kwargs, "hidden_states": _checked(name, x, new)})

    return hook


def _output_hook(name: str, fn: HookFn):
    """A forward hook giving ``fn`` the module's output (the first element of a tuple output)."""

    def hook(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        new = fn(first)
        if new is None:
            return None
        new = _checked(name, first, new)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of returning them to the OS (once per process).

    A forward pass allocates and frees activation tensors of several MiB per layer. glibc serves
    such blocks with fresh ``mmap`` pages and unmaps them on ``free``, so every new activation pays
    page faults and kernel zeroing; on this project's 2-core CPU machine that was about 8% of a
    SmolLM2 forward. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps the memory in the
    heap, where the next pass reuses it; the price is that the process keeps its peak size.
    Called when an :class:`LM` is made on the CPU; ``ROTELAB_KEEP_FREED_MEMORY=0`` turns it off.
    Returns whether the setting is in effect (``False`` off glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("ROTELAB_KEEP_FREED_MEMORY", "1") == "0":
        return _ALLOCATOR_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 34) == 1 and ok
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        ok = False
    _ALLOCATOR_TUNED = ok
    return ok


class LM:
    """A causal LM and its tokenizer, with batched scoring, decoding and layer access.

    Example:
        >>> lm = LM.load("path/to/model")  # doctest: +SKIP
        >>> scores = lm.score([lm.encode("The cat sat")], targets_from=1)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, tokenizer, *, name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.steering: SteeringSpec | None = None  # set when loaded from a steering spec
        self._attached: list = []
        self._cache_arg: tuple[nn.Module, str] | None = None
        if getattr(tokenizer, "pad_token_id", None) is None and tokenizer is not None:
            tokenizer.pad_token = tokenizer.eos_token
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype
        if self.device.type == "cpu":
            keep_freed_memory()
            configure_threads()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str = "model") -> LM:
        """Wrap a model already in memory."""
        return cls(model, tokenizer, name=name)

    @classmethod
    def load(
        cls,
        path_or_id: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> LM:
        """Load a causal LM from a directory, a ``.gguf`` file, a named model or a hub id.

        The organism is loaded by path (``Organism.lm()``); choosing it as a default is the
        pipelines' job (:mod:`rotelab.pipelines.inputs`), not the model loader's.
        Safe by default: safetensors only unless ``allow_pickle``; no remote code.
        """
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if path_or_id is not None and is_steering_dir(path_or_id):
            return cls._load_steered(
                path_or_id, device=device, dtype=dtype, allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
            )  # fmt: skip
        hf_logging.disable_progress_bar()
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        source, gguf_file, name = resolve_source(path_or_id)
        kwargs: dict = {"dtype": dt, "trust_remote_code": trust_remote_code}
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        elif Path(source).is_dir():
            check_checkpoint_dir(Path(source), allow_pickle)
            check_weight_files(Path(source))
            kwargs["use_safetensors"] = not allow_pickle or has_safetensors(Path(source))
        else:
            kwargs["use_safetensors"] = None if allow_pickle else True
        try:
            tok_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(
                source, trust_remote_code=trust_remote_code, **tok_kwargs
            )
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RotelabError(
                f"could not load model {name!r}: {first} "
                "(give a local model directory, a .gguf file, or a hub id when the hub is "
                "reachable)"
            ) from exc
        except SafetensorError as exc:  # a hub download; local directories were checked above
            raise RotelabError(
                f"could not load model {name!r}: a safetensors file is corrupt ({exc}); "
                "download it again"
            ) from None
        except pickle.UnpicklingError as exc:
            raise RotelabError(refused_pickle(source, name, exc)) from None
        model.to(dev)
        return cls(model, tokenizer, name=name)

    @classmethod
    def _load_steered(cls, path: str | os.PathLike, **load_kwargs) -> LM:
        """A steering spec directory (:mod:`rotelab.steered`): its base model, loaded as any
        model, with the steering hook attached for the LM's lifetime."""
        where = f"steering spec {path}"
        spec = SteeringSpec.read(path)
        spec.check_base_config(where)
        lm = cls.load(spec.base_model, **load_kwargs)
        spec.check_model(lm.model, lm.num_layers, where)
        lm._attached.extend(spec.install(lm.model, lm._register))
        lm.name = str(path)
        lm.steering = spec
        return lm

    def save(self, out: str | os.PathLike) -> Path:
        """Save model (safetensors) and tokenizer as a Hugging Face directory."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out

    # ------------------------------------------------------------------ basics
    @property
    def config(self):
        return self.model.config

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def num_layers(self) -> int:
        cfg = self.model.config
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
        raise RotelabError("cannot tell how many layers this model has")

    @property
    def cache_arg(self) -> str:
        """The forward argument (and output field) holding the KV cache.

        transformers renamed ``past_key_values`` to ``cache``; this accepts either.
        """
        known = self._cache_arg
        if known is None or known[0] is not self.model:  # inspected once per model
            params = inspect.signature(self.model.forward).parameters
            name = "cache" if "cache" in params else "past_key_values"
            known = self._cache_arg = (self.model, name)
        return known[1]

    def num_parameters(self, *, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` drops input embeddings and an untied output head."""
        total = sum(p.numel() for p in self.model.parameters())
        if non_embedding:
            emb = self.model.get_input_embeddings().weight
            head = self.model.get_output_embeddings().weight
            total -= emb.numel()
            if head.data_ptr() != emb.data_ptr():
                total -= head.numel()
            for name, p in self.model.named_parameters():
                if name.endswith(("wpe.weight", "embed_positions.weight")):
                    total -= p.numel()
        return total

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (no special tokens unless ``add_bos``)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else 0)

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        targets_from: int | Sequence[int] = 1,
        batch_size: int = 32,
        moments: bool = False,
        sampler: Sampler | None = None,
        vocab_chunk: int | None = None,
        progress: bool = False,
    ) -> list[TokenScores]:
        """Teacher-forced statistics for each sequence, in input order.

        Args:
            sequences: token id lists.
            targets_from: index of the first token to score, per sequence or for all (>= 1).
            batch_size: sequences per forward pass (sequences are bucketed by length).
            moments: also compute E_p[log p] and Var_p[log p] over the vocabulary.
            sampler: also log P(true token) under this :class:`Sampler` (``sampler_logprobs``).
            vocab_chunk: vocabulary columns per chunk of the softmax (default: bounded memory).
            progress: show a progress bar.
        """
        out: list[TokenScores | None] = [None] * len(sequences)
        for index, result in self.iter_score(
            sequences,
            targets_from=targets_from,
            batch_size=batch_size,
            moments=moments,
            sampler=sampler,
            vocab_chunk=vocab_chunk,
            progress=progress,
        ):
            out[index] = result
        return out  # type: ignore[return-value]

    def iter_score(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        targets_from: int | Sequence[int] = 1,
        batch_size: int = 32,
        moments: bool = False,
        sampler: Sampler | None = None,
        vocab_chunk: int | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[int, TokenScores]]:
        """Like :meth:`score`, streaming ``(index, scores)`` pairs in bucketed order."""
        n = len(sequences)
        starts = [targets_from] * n if isinstance(targets_from, int) else list(targets_from)
        if len(starts) != n:
            raise ValueError("targets_from must be an int or one value per sequence")
        ctx = self.context_length
        for i, (seq, start) in enumerate(zip(sequences, starts)):
            if len(seq) > ctx:
                raise RotelabError(
                    f"sequence {i} has {len(seq)} tokens but the model's context is {ctx}; "
                    "use shorter windows"
                )
            if not 1 <= start <= len(seq):
                raise ValueError(f"targets_from={start} out of range for sequence {i}")
        batches = list(length_buckets([len(s) for s in sequences], batch_size))
        with progress_bar(progress, len(batches), "scoring") as advance:
            for batch in batches:
                yield from self._score_batch(
                    [sequences[i] for i in batch],
                    [starts[i] for i in batch],
                    batch,
                    moments=moments,
                    sampler=sampler,
                    vocab_chunk=vocab_chunk,
                )
                advance()

    @torch.inference_mode()
    def score_continuations(
        self,
        prefix: Sequence[int],
        continuations: Sequence[Sequence[int]] | np.ndarray,
        *,
        batch_size: int = 32,
        vocab_chunk: int | None = None,
        shared_cache_bytes: int | None = None,
    ) -> np.ndarray:
        """Log-probabilities of many continuations of one prefix, from the prefix's KV cache.

        Row ``i`` equals ``score([prefix + continuations[i]], targets_from=len(prefix))[0]
        .logprobs`` up to float rounding, but the prefix runs through the model once, and so do
        the leading tokens that continuations share: the first ``depth`` tokens are computed
        once per distinct leading prefix, level by level down the trie of continuations (each
        level's rows gather their parent's cache rows), and the rest once per continuation, a
        batch of ``batch_size`` at a time, from its level-``depth`` cache. Down to level
        ``depth``, each distinct leading prefix's softmax is computed once, and each distinct
        ``(leading prefix, next token)`` pair scored once.

        ``depth`` is the deepest level that still halves the rows (at most half as many distinct
        leading prefixes as continuations) and whose cache fits in ``shared_cache_bytes``
        (distinct leading prefixes x their tokens x KV bytes per token; two levels are held at
        once while one is built). In the model's own forward a level's one-token rows each
        gather and extend a whole cache row: for 1000 random 8-digit candidates (10 first
        digits, about 100 first pairs, 630 first triples) on the default organism the third
        level cost more than it saved, so the depth there is 2. Llama models without hooks take
        :class:`_FastLlamaRest`, which keeps the prefix once and gathers only the levels' own
        positions, so there a level is shared while it has at most :data:`FAST_SHARED_MOST`
        times as many rows as continuations (the default organism's third level: depth 3). Big
        models' budget lowers the depth; 0 is the plain prefix cache repeated for every
        continuation.

        Args:
            prefix: token ids before the continuations (at least one).
            continuations: (n, L) token ids, all of one length L >= 1.
            batch_size: continuations per forward pass after the shared levels.
            vocab_chunk: vocabulary columns per chunk of the softmax (default: bounded memory).
            shared_cache_bytes: memory for the shared levels' caches (default
                :data:`SHARED_CACHE_BYTES`).

        Returns:
            (n, L) float32: log p(continuation token t | prefix, the continuation before t).
        """
        conts = np.asarray(continuations, dtype=np.int64)
        if conts.ndim != 2 or conts.size == 0:
            raise ValueError("continuations must be an (n, L) array of token ids with n, L >= 1")
        if batch_size < 1:
            raise RotelabError("batch size must be >= 1")
        n, length = conts.shape
        ctx = self.context_length
        if len(prefix) == 0:
            raise RotelabError("the prefix is empty; scoring needs at least one token before it")
        if len(prefix) + length > ctx:
            raise RotelabError(
                f"prefix ({len(prefix)} tokens) plus continuations of {length} tokens exceed the "
                f"model's context of {ctx}"
            )
        base = self.model.base_model
        if getattr(base, "_rotelab_doubled", 0):  # contrastive steering: no row-gathered caches
            full = [list(prefix) + [int(t) for t in row] for row in conts]
            scores = self.score(full, targets_from=len(prefix), batch_size=batch_size)
            return np.stack([np.asarray(s.logprobs, dtype=np.float32) for s in scores])
        budget = SHARED_CACHE_BYTES if shared_cache_bytes is None else shared_cache_bytes
        key = self.cache_arg
        dev = self.device
        out = np.empty((n, length), dtype=np.float32)
        with _lean_inference(self.model):
            first = base(input_ids=torch.tensor([list(prefix)], device=dev), use_cache=True)
            cache = getattr(first, key)
            hidden = first.last_hidden_state[:, -1]  # (nodes, D): predicts each node's next token
            token_bytes = _cache_bytes(cache) / len(prefix)
            fast = _FastLlamaRest.of(self.model, cache, len(prefix))
            if fast is None:
                depth = _shared_depth(conts, len(prefix), token_bytes, budget)
            else:  # its levels keep only their own positions per node
                depth = _shared_depth(conts, 0, token_bytes, budget, most=FAST_SHARED_MOST)
            node = np.zeros(n, dtype=np.int64)  # each continuation's trie node at level t
            for t in range(depth + 1):
                # the next level's nodes: distinct (node, token t) pairs, each scored once
                pairs, child = np.unique(
                    np.stack([node, conts[:, t]], axis=1), axis=0, return_inverse=True
                )
                parents = torch.as_tensor(pairs[:, 0], device=dev)
                tokens = torch.as_tensor(pairs[:, 1], device=dev)
                logp = self._target_logprobs(hidden, tokens, vocab_chunk, rows=parents)
                out[:, t] = logp[child.reshape(-1)]
                if t == depth:
                    break
                if fast is not None:
                    hidden = fast.step(tokens, parents)
                else:
                    past = cache_rows(cache, parents)
                    step = base(input_ids=tokens[:, None], use_cache=True, **{key: past})
                    cache, hidden = getattr(step, key), step.last_hidden_state[:, 0]
                node = child.reshape(-1)
            if depth == length - 1:
                return out
            ids = torch.as_tensor(conts[:, depth:], device=dev)  # (n, L - depth)
            for batch in length_buckets([length] * n, batch_size):  # equal lengths: input order
                rows = ids[torch.as_tensor(batch, device=dev)]  # (B, L - depth)
                parents = torch.as_tensor(node[batch], device=dev)
                if fast is not None:
                    h = fast(rows[:, :-1], parents)
                else:
                    past = cache_rows(cache, parents)
                    rest = base(input_ids=rows[:, :-1], use_cache=True, **{key: past})
                    h = rest.last_hidden_state
                # h: (B, L - depth - 1, D), predicting tokens depth + 1...
                logp = self._target_logprobs(h.flatten(0, 1), rows[:, 1:].flatten(), vocab_chunk)
                out[batch, depth + 1 :] = logp.reshape(len(batch), -1)
        return out

    def _target_logprobs(
        self,
        h: torch.Tensor,
        targets: torch.Tensor,
        vocab_chunk: int | None,
        rows: torch.Tensor | None = None,
    ) -> np.ndarray:
        """(N,) log p(``targets[i]``) at hidden state ``h[rows[i]]`` (``h``: (M, D); ``rows``
        default: ``i``), chunked over the vocabulary: the ``logprob`` of :meth:`head_stats`
        without the top-k and margins it also keeps, and its normaliser once per row of ``h``
        however many targets share it."""
        vocab = self.vocab_size
        chunk = vocab_chunk or default_vocab_chunk(vocab, h.shape[0])
        if rows is None:
            rows = torch.arange(len(targets), device=h.device)
        lse = torch.full((h.shape[0],), -math.inf, device=h.device, dtype=torch.float32)
        target_logit = torch.zeros(len(targets), device=h.device, dtype=torch.float32)
        for lo in range(0, vocab, chunk):
            hi = min(vocab, lo + chunk)
            logits = self.head_logits(h, lo, hi)  # (M, chunk)
            inside = (targets >= lo) & (targets < hi)
            picked = logits[rows, (targets - lo).clamp(0, hi - lo - 1)]
            target_logit = torch.where(inside, picked, target_logit)
            top = logits.amax(dim=1)  # in place below: faster than torch.logsumexp on the CPU
            lse = torch.logaddexp(lse, logits.sub_(top[:, None]).exp_().sum(1).log_().add_(top))
        return (target_logit - lse[rows]).cpu().numpy()

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) output of the final norm, before the LM head."""
        base = self.model.base_model
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    @torch.inference_mode()
    def _score_batch(self, seqs, starts, indices, *, moments, sampler, vocab_chunk):
        lengths = [len(s) for s in seqs]
        ids, mask = pad_batch(seqs, self.pad_id, device=self.device)
        # The last column is only ever a target: the model never needs to read it.
        cut = max(1, ids.shape[1] - 1)
        with _lean_inference(self.model):
            hidden = self.final_hidden(ids[:, :cut], mask[:, :cut])  # (B, T - 1, D)
        # Position t predicts token t+1: gather the rows that predict a target token.
        rows, cols = [], []
        for b, (length, start) in enumerate(zip(lengths, starts)):
            rows.extend([b] * (length - start))
            cols.extend(range(start - 1, length - 1))
        rows_t = torch.tensor(rows, dtype=torch.long, device=hidden.device)
        cols_t = torch.tensor(cols, dtype=torch.long, device=hidden.device)
        h = hidden[rows_t, cols_t]  # (N, D)
        targets = ids[rows_t, cols_t + 1]  # (N,)
        stats = self.head_stats(
            h, targets, moments=moments, sampler=sampler, vocab_chunk=vocab_chunk
        )
        stats = {k: v.cpu().numpy() for k, v in stats.items()}
        offset = 0
        for b, index in enumerate(indices):
            k = lengths[b] - starts[b]
            sl = slice(offset, offset + k)
            offset += k
            yield (
                index,
                TokenScores(
                    logprobs=stats["logprob"][sl],
                    argmax=stats["argmax"][sl],
                    argmax_match=stats["argmax"][sl] == stats["target"][sl],
                    margin=stats["margin"][sl],
                    target_gap=stats["target_gap"][sl],
                    mu=stats["mu"][sl] if moments else None,
                    sigma2=stats["sigma2"][sl] if moments else None,
                    sampler_logprobs=stats["sampler"][sl] if sampler is not None else None,
                ),
            )

    def head_logits(self, h: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """fp32 logits of vocabulary columns ``lo:hi`` at hidden states ``h`` (N, D), as the model
        makes them: the head's weight and bias, then ``logit_scale`` and final-logit softcapping
        where the config has them. Differentiable in ``h``.
        """
        head = self.model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        logits = h @ head.weight[lo:hi].T
        if bias is not None:
            logits = logits + bias[lo:hi]
        logits = logits.to(torch.float32)
        cfg = self.model.config
        scale = getattr(cfg, "logit_scale", None)
        softcap = getattr(cfg, "final_logit_softcapping", None)
        if scale:
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def head_stats(
        self,
        h: torch.Tensor,
        targets: torch.Tensor,
        *,
        moments: bool = False,
        sampler: Sampler | None = None,
        vocab_chunk: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Softmax statistics of the LM head at hidden states ``h`` (N, D), chunked over the vocab.

        Keeps a running max/sum (log-sum-exp), the top-k logits (k >= 2), the target logit and,
        with ``moments``, the mean and variance of the logits under the softmax, merged chunk by
        chunk with the parallel-variance formula so nothing cancels catastrophically. With a
        ``sampler`` it also gives log P_sampler(target) as :meth:`Sampler.logprobs` defines it:
        streamed over the vocabulary chunks for temperature and top-k; a top-p sampler needs the
        whole sorted distribution, so its rows are taken a bounded block at a time instead.
        """
        vocab = self.vocab_size
        n = h.shape[0]
        if vocab_chunk is None:
            vocab_chunk = default_vocab_chunk(vocab, n)
        # temperature and top-k stream with the chunks; greedy and top-p are handled below
        streamed = sampler is not None and not sampler.greedy and sampler.top_p == 1
        temperature, top_k = (sampler.temperature, sampler.top_k) if streamed else (1.0, 0)
        keep = max(2, top_k)
        full_temp = streamed and top_k == 0 and temperature != 1.0
        dev = h.device
        f32 = torch.float32
        run_max = torch.full((n,), -math.inf, device=dev, dtype=f32)
        run_sum = torch.zeros(n, device=dev, dtype=f32)
        run_mean = torch.zeros(n, device=dev, dtype=f32)
        run_var = torch.zeros(n, device=dev, dtype=f32)
        t_max, t_sum = run_max.clone(), run_sum.clone()
        top_v = torch.full((n, 0), -math.inf, device=dev, dtype=f32)
        top_i = torch.zeros((n, 0), dtype=torch.long, device=dev)
        target_logit = torch.zeros(n, device=dev, dtype=f32)
        for lo in range(0, vocab, vocab_chunk):
            hi = min(vocab, lo + vocab_chunk)
            logits = self.head_logits(h, lo, hi)  # (N, chunk)
            # top-k over (running top-k + this chunk's top-k)
            cv, ci = logits.topk(min(keep, hi - lo), dim=1)
            width = min(keep, top_v.shape[1] + cv.shape[1])
            top_v, pos = torch.cat([top_v, cv], 1).topk(width, dim=1)
            top_i = torch.cat([top_i, ci + lo], 1).gather(1, pos)
            in_chunk = (targets >= lo) & (targets < hi)
            if in_chunk.any():
                local = (targets - lo).clamp(0, hi - lo - 1)
                picked = logits.gather(1, local[:, None]).squeeze(1)
                target_logit = torch.where(in_chunk, picked, target_logit)
            chunk_max = cv[:, 0]
            if moments or full_temp:  # the logits are read again below
                w = torch.exp(logits - chunk_max[:, None])
            else:
                w = logits.sub_(chunk_max[:, None]).exp_()
            chunk_sum = w.sum(1)
            new_max = torch.maximum(run_max, chunk_max)
            a = run_sum * torch.exp(run_max - new_max)
            b = chunk_sum * torch.exp(chunk_max - new_max)
            total = a + b
            if moments:
                chunk_mean = (w * logits).sum(1) / chunk_sum
                chunk_var = (w * (logits - chunk_mean[:, None]).square()).sum(1) / chunk_sum
                delta = chunk_mean - run_mean
                fa, fb = a / total, b / total
                run_mean = run_mean + delta * fb
                run_var = fa * run_var + fb * chunk_var + delta.square() * fa * fb
            run_sum, run_max = total, new_max
            if full_temp:
                new_t = torch.maximum(t_max, chunk_max / temperature)
                scaled = torch.exp(logits / temperature - new_t[:, None]).sum(1)
                t_sum = t_sum * torch.exp(t_max - new_t) + scaled
                t_max = new_t
        lse = run_max + torch.log(run_sum)
        second = top_v[:, 1] if top_v.shape[1] > 1 else torch.full_like(run_max, -math.inf)
        out = {
            "logprob": target_logit - lse,
            "argmax": top_i[:, 0],
            "target": targets,
            "margin": top_v[:, 0] - second,
            "target_gap": top_v[:, 0] - target_logit,
        }
        if moments:
            out["mu"] = run_mean - lse
            out["sigma2"] = run_var
        if sampler is not None:
            if sampler.greedy:
                sampled = torch.where(out["argmax"] == targets, 0.0, -math.inf)
            elif not streamed:
                sampled = self._sampler_logprob(h, targets, sampler)
            elif top_k:
                kth = top_v[:, min(top_k, top_v.shape[1]) - 1]
                pool = torch.logsumexp(top_v[:, :top_k] / temperature, dim=1)
                sampled = torch.where(
                    target_logit >= kth, target_logit / temperature - pool, -math.inf
                )
            elif full_temp:
                sampled = target_logit / temperature - (t_max + torch.log(t_sum))
            else:
                sampled = out["logprob"]
            out["sampler"] = sampled
        return out

    def _sampler_logprob(self, h: torch.Tensor, targets: torch.Tensor, sampler: Sampler):
        """(N,) log P_sampler(target) from whole rows of logits, a block of rows at a time."""
        out = torch.empty(h.shape[0], device=h.device, dtype=torch.float32)
        step = max(1, LOGIT_BLOCK // self.vocab_size)
        for lo in range(0, h.shape[0], step):
            logp = sampler.logprobs(self.head_logits(h[lo : lo + step]))  # (rows, V)
            out[lo : lo + step] = logp.gather(1, targets[lo : lo + step, None]).squeeze(1)
        return out

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        *,
        batch_size: int = 32,
        sampler: Sampler = GREEDY,
        seed: int = 0,
        ragged: bool = False,
        progress: bool = False,
    ) -> list[list[int]]:
        """Continue each prefix with the KV cache; returns only the new tokens, in input order.

        Prefixes are batched by exact length so no padding enters the computation (greedy output
        then equals unbatched decoding). Decoding does not stop at end-of-sequence tokens: it runs
        for exactly ``max_new_tokens`` (per prefix or for all) so outputs align with true suffixes.
        Tokens are picked by ``sampler`` (default greedy); draws come from one generator seeded by
        ``seed``.

        ``ragged=True`` batches prefixes of any lengths together instead (for data whose prefixes
        vary, which exact-length batching would decode almost one at a time): each batch is
        left-padded, padding is masked out of attention and positions count from each row's first
        real token, so every row sees exactly its own prefix; greedy tokens equal unbatched
        decoding up to float near-ties.
        """
        n = len(prefixes)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        ctx = self.context_length
        for i, (p, k) in enumerate(zip(prefixes, budgets)):
            if len(p) == 0:
                raise RotelabError(f"prefix {i} is empty; decoding needs at least one token")
            if len(p) + k > ctx:
                raise RotelabError(
                    f"prefix {i} ({len(p)} tokens) plus {k} new tokens exceeds the model's "
                    f"context of {ctx}"
                )
        results: list[list[int]] = [[] for _ in range(n)]
        live = [i for i in range(n) if budgets[i] > 0]
        if ragged:  # longest budgets and prefixes first, so batches waste few steps
            live.sort(key=lambda i: (-budgets[i], -len(prefixes[i])))
            groups = [live]
        else:
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i in live:
                by_shape.setdefault((len(prefixes[i]), budgets[i]), []).append(i)
            groups = list(by_shape.values())
        chunks = [g[j : j + batch_size] for g in groups for j in range(0, len(g), batch_size)]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with progress_bar(progress, len(chunks), "decoding") as advance:
            for chunk in chunks:
                # left padding (none when lengths are equal)
                ids, mask = pad_batch([prefixes[i] for i in chunk], self.pad_id, side="left")
                steps = max(budgets[i] for i in chunk)
                padded = bool((mask == 0).any())
                new = self._decode(ids.to(self.device), mask.to(self.device) if padded else None,
                                   steps, sampler, gen)  # fmt: skip
                for row, i in enumerate(chunk):
                    results[i] = new[row, : budgets[i]].tolist()
                advance()
        return results

    def _decode(self, ids, mask, steps, sampler: Sampler, gen) -> torch.Tensor:
        """``steps`` new tokens for each row of ``ids``; ``mask`` marks real tokens of left-padded
        rows."""
        key = self.cache_arg
        extra = {}
        if mask is not None:
            pos = (mask.cumsum(1) - 1).clamp(min=0)  # 0 at each row's first real token
            extra = {"attention_mask": mask, "position_ids": pos}
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra)
        chosen = []
        for step in range(steps):
            nxt = sampler.pick(out.logits[:, -1, :].float(), gen)
            chosen.append(nxt)
            if step == steps - 1:
                break
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((len(ids), 1))], dim=1)
                pos = pos[:, -1:] + 1
                extra = {"attention_mask": mask, "position_ids": pos}
            out = self.model(
                input_ids=nxt[:, None], use_cache=True, **{key: getattr(out, key)}, **extra
            )
        return torch.stack(chosen, dim=1).cpu()

    # ------------------------------------------------------------------ hook points
    def hook_points(self) -> list[str]:
        """Names :meth:`hooks` accepts, in model order.

        Per block ``i`` (found by the model's structure, not its name): ``blocks.{i}.resid_in``
        (the residual stream entering the block), ``blocks.{i}.attn_out`` (the attention's
        output, before it is added to the stream), ``blocks.{i}.mlp_in`` and ``blocks.{i}.mlp_out``
        (the MLP's input, after its norm, and its output) and ``blocks.{i}.resid_out`` (the stream
        leaving the block), each (batch, seq, hidden). Then, per linear layer of
        :meth:`linear_layers`, ``{name}.input`` and ``{name}.output``: what its weight reads
        (..., in) and writes (..., out).
        """
        return list(self._hook_sites())

    def _hook_sites(self) -> dict[str, tuple[nn.Module, str]]:
        """Hook point name -> (module, ``"input"`` or ``"output"``)."""
        sites: dict[str, tuple[nn.Module, str]] = {}
        for i, block in enumerate(_transformer_blocks(self.model) or []):
            attn, mlp = _block_parts(block)
            sites[f"blocks.{i}.resid_in"] = (block, "input")
            if attn is not None:
                sites[f"blocks.{i}.attn_out"] = (attn, "output")
            if mlp is not None:
                sites[f"blocks.{i}.mlp_in"] = (mlp, "input")
                sites[f"blocks.{i}.mlp_out"] = (mlp, "output")
            sites[f"blocks.{i}.resid_out"] = (block, "output")
        for layer in self.linear_layers():
            sites[f"{layer.name}.input"] = (layer.module, "input")
            sites[f"{layer.name}.output"] = (layer.module, "output")
        return sites

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[LM]:
        """Run ``fns`` on their hook points for every forward pass inside the ``with`` block.

        Each function gets the activation (a tensor) and returns ``None`` to observe it or a
        tensor of the same shape that replaces it. The hooks are removed when the block ends,
        also on an exception. Contexts nest: an inner hook on the same point runs after the
        outer one and sees what it returned. Scoring's in-place MLP path stays on with hooks on
        the block points (they sit outside the in-place operations) and steps aside for hooks on
        an MLP's ``gate_proj``/``up_proj``.

        Example:
            >>> with lm.hooks({"blocks.1.mlp_out": lambda t: 0.5 * t}):  # doctest: +SKIP
            ...     damped = lm.score(sequences)
        """
        handles = self._register(fns)
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def attach_hooks(self, fns: Mapping[str, HookFn]) -> None:
        """Install ``fns`` on their hook points for the rest of the LM's life (a steered model's
        steering, :mod:`rotelab.steered`). They run before any :meth:`hooks` on the same point."""
        self._attached.extend(self._register(fns))

    @contextlib.contextmanager
    def steered(self, spec: SteeringSpec | None) -> Iterator[LM]:
        """Apply a steering spec (any mode, :mod:`rotelab.steered`) inside the ``with`` block;
        ``None`` applies nothing."""
        handles = [] if spec is None else spec.install(self.model, self._register)
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _register(self, fns: Mapping[str, HookFn]) -> list:
        """Register ``fns`` on their hook points; returns the handles (all or none)."""
        sites = self._hook_sites()
        unknown = [name for name in fns if name not in sites]
        if unknown:
            example = next(iter(sites), None)
            raise RotelabError(
                f"{self.name} has no hook point {unknown[0]!r}; lm.hook_points() lists them"
                + (f" (they look like {example})" if example else "")
            )
        handles = []
        try:
            for name, fn in fns.items():
                module, where = sites[name]
                if where == "input":
                    hook = _input_hook(name, fn)
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(_output_hook(name, fn)))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        return handles

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
    def hidden_states(
        self,
        sequences: Sequence[Sequence[int]],
        layers: Sequence[int],
        *,
        pool: str = "last",
        batch_size: int = 32,
    ) -> dict[int, np.ndarray]:
        """Residual-stream activations after the given blocks (0 = embeddings, L = last block).

        Layer 0 is ``blocks.0.resid_in`` and layer ``l`` is ``blocks.{l-1}.resid_out`` (see
        :meth:`hook_points`): the stream itself, so layer L is taken before the final norm.
        ``pool`` is ``"last"`` (the last token), ``"mean"`` (over tokens) → arrays (n, hidden);
        ``"none"`` → an object array of (len_i, hidden) arrays per sequence.
        """
        if pool not in {"last", "mean", "none"}:
            raise RotelabError(f"pool must be last, mean or none, not {pool!r}")
        bad = [layer for layer in layers if not 0 <= layer <= self.num_layers]
        if bad:
            raise RotelabError(f"layers {bad} out of range 0..{self.num_layers}")
        collected: dict[int, list] = {layer: [None] * len(sequences) for layer in layers}
        seen: dict[int, torch.Tensor] = {}

        def keep(layer: int) -> HookFn:
            def fn(t: torch.Tensor) -> None:
                seen[layer] = t

            return fn

        points = {
            (f"blocks.{layer - 1}.resid_out" if layer else "blocks.0.resid_in"): keep(layer)
            for layer in layers
        }
        with self.hooks(points):
            for batch in length_buckets([len(s) for s in sequences], batch_size):
                rows = [sequences[i] for i in batch]
                ids, mask = pad_batch(rows, self.pad_id, device=self.device)
                with _lean_inference(self.model):
                    self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
                for layer in layers:
                    hs = seen[layer].float()
                    for row, i in enumerate(batch):
                        length = len(sequences[i])
                        seq_h = hs[row, :length]
                        if pool == "last":
                            value = seq_h[-1]
                        elif pool == "mean":
                            value = seq_h.mean(0)
                        else:
                            value = seq_h
                        collected[layer][i] = value.cpu().numpy()
        result = {}
        for layer, values in collected.items():
            if pool == "none":
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                result[layer] = arr
            else:
                result[layer] = np.stack(values)
        return result

    def linear_layers(self, pattern: str | Sequence[str] | None = None) -> list[LinearLayer]:
        """Linear maps of the transformer blocks (not embeddings or head), by module name.

        ``pattern``: glob(s) or regex(es) over module names, e.g. ``"*.mlp.*"``; ``None`` = all.
        """
        head = self.model.get_output_embeddings()
        layers = []
        for name, module in self.model.named_modules():
            if module is head:
                continue
            if isinstance(module, nn.Linear):
                layers.append(LinearLayer(name, module, "linear"))
            elif _is_conv1d(module):
                layers.append(LinearLayer(name, module, "conv1d"))
        if pattern is None:
            return layers
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return [layer for layer in layers if any(_name_matches(layer.name, p) for p in patterns)]

    def mlp_layers(self, blocks: Sequence[int] | None = None) -> list[LinearLayer]:
        """The MLP projections (gate/up/down, c_fc/c_proj, dense_h_to_4h/dense_4h_to_h)."""
        layers = [layer for layer in self.linear_layers() if ".mlp." in f".{layer.name}."]
        if blocks is None:
            return layers
        wanted = set(blocks)
        return [layer for layer in layers if block_index(layer.name) in wanted]


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to (``model.layers.3.mlp.up_proj`` → 3)."""
    match = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", f".{name}.")
    return int(match.group(1)) if match else None


def _name_matches(name: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


#: Default memory for the shared levels of :meth:`LM.score_continuations` (bytes of KV cache).
SHARED_CACHE_BYTES = 256 << 20


def _cache_bytes(cache) -> int:
    """Bytes of the keys and values a KV cache holds."""
    tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: ``tokenizer(texts,
    add_special_tokens=False)["input_ids"]``, but for a fast tokenizer without truncation or
    padding set, straight from its Rust backend's ``encode_batch_fast`` (no offsets, no
    per-text conversion to dicts: on 20,000 short texts 0.14 s instead of 0.45 s, a fifth of a
    10,000-query term -> ID evaluation on the tiny organism). Any other tokenizer, or one with
    truncation or padding configured, goes through its own call."""
    texts = list(texts)
    backend = getattr(tokenizer, "_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if (
        fast is None
        or not getattr(tokenizer, "is_fast", False)
        or backend.truncation is not None
        or backend.padding is not None
        or bool(backend.encode_special_tokens) != split
    ):
        return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [e.ids for e in fast(texts, add_special_tokens=False)]


def lean_llama(model: nn.Module) -> bool:
    """Whether ``model`` is a plain Llama in eval mode that the lean passes here (and
    :mod:`rotelab.termnorm.evaluate`'s) may run by hand: no hooks (hook points must see every
    forward), bias-free ``nn.Linear`` projections, Llama's RMSNorm (:func:`rms_norm` repeats its
    operations, nothing else's)."""
    try:
        from transformers.models.llama.modeling_llama import LlamaModel
    except ImportError:  # pragma: no cover - transformers always has Llama
        return False
    base = model.base_model
    if type(base) is not LlamaModel or model.training:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        if any(lin.bias is not None or type(lin) is not nn.Linear for lin in linears):
            return False
    norms = [base.norm]
    norms += [m for lay in base.layers for m in (lay.input_layernorm, lay.post_attention_layernorm)]
    return all(type(norm).__name__ == "LlamaRMSNorm" for norm in norms)


def fused_llama_weights(base: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block of a Llama ``base`` model: the query, key and value projections as one weight,
    and the MLP's gate and up projections as one (one product each instead of three and two)."""
    qkv, gate_up = [], []
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        qkv.append(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        gate_up.append(torch.cat([m.gate_proj.weight, m.up_proj.weight]))
    return qkv, gate_up


def cache_rows(cache, rows: torch.Tensor):
    """A new cache of ``cache``'s batch rows ``rows`` (repeats allowed); ``cache`` is unchanged.

    The forward appends to the cache it is given, so each forward gets its own: the layers are
    copied shallowly and the cache's row gather (``reorder_cache``, an ``index_select``: on the
    CPU about 3x faster than the advanced indexing of ``batch_select_indices``) then replaces
    their tensors by gathered copies.
    """
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    picked.reorder_cache(rows)
    return picked


class _FastLlamaRest:
    """:meth:`LM.score_continuations` for Llama models after the prefix: the shared trie levels
    (:meth:`step`) and the per-continuation batches (``__call__``), without cache or mask objects.

    The prefix's keys and values are the same for every continuation, so they are kept once and
    meet all rows' queries in one product per head; only the few positions after the prefix (one
    per trie level) are kept per trie node and gathered per row. The query, key and value
    projections run as one product, and so do the MLP's gate and up projections. With the whole
    cache gathered per row, as the model's own forward needs, the gathers were about 5% of
    exposure's time on the default organism and a third trie level cost more than it saved.

    The same operations as transformers' Llama forward, in a different order, so the results
    agree to float rounding (not bit for bit). The generic path (:func:`cache_rows` and the
    model's own forward) is used for other architectures and whenever a hook is installed, so
    hook points always apply.
    """

    def __init__(self, base: nn.Module, cache, prefix_len: int) -> None:
        self.base = base
        self.shared = prefix_len  # prefix positions, read once for every row
        self.length = prefix_len  # cached positions per trie node
        self.pre_k = [layer.keys[0] for layer in cache.layers]  # (kv heads, P, d)
        self.pre_v = [layer.values[0] for layer in cache.layers]
        # (nodes, kv heads, levels so far, d): the trie levels' keys and values, per node
        self.node_k = [k[None, :, :0] for k in self.pre_k]
        self.node_v = [v[None, :, :0] for v in self.pre_v]
        self.qkv, self.gate_up = fused_llama_weights(base)

    @classmethod
    def of(cls, model: nn.Module, cache, prefix_len: int) -> _FastLlamaRest | None:
        """The fast path for this model and the prefix's cache, or ``None`` where it does not
        apply."""
        if not lean_llama(model):
            return None
        base = model.base_model
        layers = getattr(cache, "layers", None)
        if layers is None or len(layers) != len(base.layers):
            return None
        if not all(isinstance(getattr(c, "keys", None), torch.Tensor) for c in layers):
            return None
        return cls(base, cache, prefix_len)

    def step(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """One trie level: node ``i`` is node ``parents[i]`` followed by ``tokens[i]``; returns
        the new nodes' (U, D) final hidden states and keeps their keys and values."""
        keys, values = [], []  # per layer: (parents' levels, the new token), gathered once
        h = self._forward(tokens[:, None], parents, keep=(keys, values))
        self.node_k = [torch.cat(kv, 2) for kv in keys]
        self.node_v = [torch.cat(kv, 2) for kv in values]
        self.length += 1
        return h[:, 0]

    def __call__(self, ids: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """(B, T, D) final hidden states of ``ids`` (B, T), row ``i`` continuing trie node
        ``parents[i]`` of the last :meth:`step`."""
        return self._forward(ids, parents)

    def _forward(self, ids: torch.Tensor, parents: torch.Tensor, keep=None) -> torch.Tensor:
        base = self.base
        n, t = ids.shape
        x = base.embed_tokens(ids)
        positions = torch.arange(self.length, self.length + t, device=ids.device)[None]
        cos, sin = base.rotary_emb(x, positions)  # (1, T, d)
        cos, sin = cos[:, :, None], sin[:, :, None]  # (1, T, 1, d): over (B, T, heads, d)
        causal = torch.full((t, t), -math.inf, device=ids.device, dtype=x.dtype).triu_(1)
        shared = self.shared
        for i, layer in enumerate(base.layers):
            att = layer.self_attn
            d, groups = att.head_dim, att.num_key_value_groups
            heads, kv_heads = att.q_proj.out_features // d, att.k_proj.out_features // d
            qkv = nn.functional.linear(rms_norm(layer.input_layernorm, x), self.qkv[i])
            # rotary on the queries and keys together, in (B, T, heads, d): Llama's
            # x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)
            qk = qkv[..., : (heads + kv_heads) * d].view(n, t, heads + kv_heads, d)
            half = d // 2
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1).mul_(sin)
            q = qk[:, :, :heads].transpose(1, 2)  # (B, heads, T, d)
            k = qk[:, :, heads:].transpose(1, 2)  # (B, kv heads, T, d)
            v = qkv[..., (heads + kv_heads) * d :].view(n, t, kv_heads, d).transpose(1, 2)
            pre_k, pre_v = self.pre_k[i], self.pre_v[i]  # (kv heads, P, d)
            node_k = self.node_k[i].index_select(0, parents)  # (B, kv heads, levels, d)
            node_v = self.node_v[i].index_select(0, parents)
            if keep is not None:  # a trie level: its nodes' keys and values, before any repeat
                keep[0].append((node_k, k))
                keep[1].append((node_v, v))
            if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
                pre_k, pre_v = (z.repeat_interleave(groups, dim=0) for z in (pre_k, pre_v))
                node_k, node_v, k, v = (
                    z.repeat_interleave(groups, dim=1) for z in (node_k, node_v, k, v)
                )
            # the prefix's keys meet every row's queries as one (heads, B*T, P) product
            q_rows = q.transpose(0, 1).reshape(heads, n * t, d)
            pre = (q_rows @ pre_k.transpose(-1, -2)).view(heads, n, t, shared).transpose(0, 1)
            scores = torch.cat(
                [pre, q @ node_k.transpose(-1, -2), (q @ k.transpose(-1, -2)).add_(causal)],
                dim=-1,
            ).mul_(att.scaling)
            p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            width = shared + node_k.shape[2]
            p_pre = p[..., :shared].transpose(0, 1).reshape(heads, n * t, shared)
            o = (p_pre @ pre_v).view(heads, n, t, d).transpose(0, 1)
            o = o + (p[..., shared:width] @ node_v).add_(p[..., width:] @ v)
            x = x + nn.functional.linear(o.transpose(1, 2).reshape(n, t, -1), att.o_proj.weight)
            gate, up = nn.functional.linear(
                rms_norm(layer.post_attention_layernorm, x), self.gate_up[i]
            ).chunk(2, dim=-1)
            act = layer.mlp.act_fn(gate).mul_(up)
            x = x + nn.functional.linear(act, layer.mlp.down_proj.weight)
        return rms_norm(base.norm, x)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (``LlamaRMSNorm.forward``, the same operations) without a module call."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _shared_depth(
    conts: np.ndarray, prefix_len: int, token_bytes: float, budget: float, most: float = 0.5
) -> int:
    """How many leading positions of (n, L) continuations to compute once per distinct prefix.

    Level ``t`` holds one cache row of ``prefix_len + t`` tokens per distinct leading ``t``
    tokens; the deepest level, at most L - 1 (the last token is only ever a target), with at
    most ``most`` times as many rows as continuations and rows that fit in ``budget`` bytes.
    """
    n, length = conts.shape
    depth = 0
    for t in range(1, length):
        nodes = len(np.unique(conts[:, :t], axis=0))
        if nodes * (prefix_len + t) * token_bytes > budget or nodes > most * n:
            break
        depth = t
    return depth


#: :func:`_shared_depth`'s ``most`` on the Llama fast path, whose trie levels gather only their
#: own few positions per node, not the prefix: on the default organism's 1000 random 8-digit
#: candidates a third level (about 630 distinct leading triples) saved time there.
FAST_SHARED_MOST = 0.8


#: Entries of one block of logits computed at a time (fp32: 32 MiB), by :meth:`LM.head_stats` and
#: K-FAC's head: large enough for efficient products, small enough to bound memory.
LOGIT_BLOCK = 8 << 20


def default_vocab_chunk(vocab: int, rows: int) -> int:
    """Vocabulary columns per chunk of :meth:`LM.head_stats`: one (rows x chunk) block of
    :data:`LOGIT_BLOCK` entries."""
    return max(256, min(vocab, LOGIT_BLOCK // max(rows, 1)))


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first)."""
    if batch_size < 1:
        raise RotelabError("batch size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for j in range(0, len(order), batch_size):
        yield order[j : j + batch_size]


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    side: str = "right",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one padded batch: (ids, mask), both (batch, longest) int64.

    ``mask`` is 1 at real tokens and 0 at padding; ``side="left"`` pads before the tokens (for
    decoding, so every row ends at its last real token). On ``device`` when given, else the CPU.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be right or left, not {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, cols] = torch.as_tensor(list(s), dtype=torch.long)
        mask[row, cols] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


class progress_bar:  # noqa: N801 - used like a function: ``with progress_bar(...) as advance``
    """A rich progress bar (on stderr) when asked for; used as ``with ... as advance``
    (``advance(n=1)``). ``total=None`` when the amount of work is not known in advance.

    Every long loop advances one, so ``advance`` is also where a process re-checks its share of the
    cores (:func:`rotelab.machine.share_threads`, at most once a second), bar or no bar.
    """

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n=1: share_threads()
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(transient=True, console=Console(stderr=True))
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)

        def advance(n: int = 1) -> None:
            share_threads()
            self._bar.advance(task, n)

        return advance

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
