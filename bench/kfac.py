"""Benchmark: K-FAC factor collection against a plain forward+backward and against curvlinops.

Two modes:

``timing`` (default): on a Llama-style model (4 layers, hidden 256, intermediate 688, vocab 2048,
random weights, seeded) and the same 16k tokens (128 sequences of 128 predicted tokens), time

- a plain forward+backward with every weight gradient (``loss.backward()``, gold labels);
- rotelab's :class:`~rotelab.curvature.KFAC` (sampled labels: the true Fisher);
- curvlinops' ``KFACLinearOperator`` (Monte Carlo Fisher, 1 sample, "expand");
- the same plain pass and rotelab's K-FAC on the model cast to bfloat16 (``--dtype bfloat16``);
- the matrix products alone of the plain pass and of rotelab's K-FAC (:func:`gemm_replay`): the
  floor each method's time cannot go below, whatever its elementwise work costs;

for all MLP layers and for the MLP layers of the top 3 blocks, and check factor agreement with
curvlinops on the same labels (gold labels vs curvlinops' empirical Fisher).

``--vocab 32000`` runs the same with Llama's default vocabulary, where the LM head (whose weight
gradient K-FAC never computes) is a larger share of the pass.

``model``: on a real model (``--model``, default ``smollm2``, fp32), time the plain pass and
rotelab's K-FAC on all MLP layers on the same random tokens (``--tokens`` in sequences of
``--seq-len``, one sequence per pass as ``rotelab kfac`` takes them at that length).

``organism``: on the default organism, collect factors and sweep ρ: strict extraction of inserted
items by count (teacher-forced argmax on the ledger's prefix/suffix) and held-out perplexity.

curvlinops is a bench-only dependency: ``pip install torch==<same> curvlinops-for-pytorch`` then
``pip uninstall -y torchvision``.
Run: ``python bench/kfac.py [timing|model|organism] [--repeats N]``.
``timing`` and ``model`` print their JSON and then their rows as a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rotelab.curvature import KFAC  # noqa: E402
from rotelab.lm import LM  # noqa: E402
from rotelab.machine import bf16_native, configure_threads, describe_machine  # noqa: E402


def bench_model(seed: int = 0, vocab: int = 2048, intermediate: int = 688):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=intermediate, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


class _Tok:
    """Just enough of a tokenizer for :class:`LM` (the bench feeds token ids)."""

    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = 0


def _measure(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time is steadier on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _interleaved(methods: dict, repeats: int) -> dict:
    """Median wall and CPU time per method, runs interleaved so load changes hit all alike.

    The order rotates by one method each repeat: a fixed order moved a method's time by up to 8%
    here (the same K-FAC code measured 0.88-0.90x of plain when it ran right after plain, and
    0.97x when it ran after another collection).
    """
    for fn in methods.values():
        fn()  # warm-up (allocator, kernels)
    samples: dict = {name: [] for name in methods}
    names = list(methods)
    for rep in range(repeats):
        for j in range(len(names)):
            name = names[(rep + j) % len(names)]
            samples[name].append(_measure(methods[name]))
    return {
        name: {"wall_s": statistics.median(w for w, _ in xs),
               "cpu_s": statistics.median(c for _, c in xs), "raw": xs}
        for name, xs in samples.items()
    }  # fmt: skip


def plain_fwd_bwd(model, batches):
    for p in model.parameters():
        p.requires_grad_(True)
    for x, y in batches:
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        loss.backward()
    model.zero_grad(set_to_none=True)


@functools.lru_cache(maxsize=16)
def _rows(rows: int, width: int) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def gemm_replay(lm: LM, n_batches: int, rows: int, targets: list[str] | None) -> None:
    """A floor for a method: only its matrix products, at its shapes, with the model's weights.

    ``targets=None``: the plain pass (forward, every input gradient, every weight gradient).
    Otherwise rotelab's K-FAC on those layers: forward, input gradients only above the lowest
    target block plus that block's ``down_proj`` (the graph starts at its ``gate``/``up`` outputs),
    and the Gram products of A and G as :func:`~rotelab.curvature.kfac._add_gram_` computes them
    (``gate``/``up`` share one A). Attention, norms, activations and the softmax are left out.
    """
    from rotelab.curvature.kfac import _add_gram_
    from rotelab.lm import block_index

    layers = lm.linear_layers()
    head = lm.model.get_output_embeddings().weight
    lowest = None if targets is None else min(block_index(n) for n in targets)
    for _ in range(n_batches):
        for layer in layers:  # forward
            _rows(rows, layer.in_features) @ layer.weight.T
        _rows(rows, head.shape[1]) @ head.T
        _rows(rows, head.shape[0]) @ head  # the head's input gradient
        for layer in layers:  # backward
            block = block_index(layer.name)
            w, g = layer.weight, _rows(rows, layer.out_features)
            lowest_down = block == lowest and layer.name.endswith("down_proj")
            if lowest is None or block > lowest or lowest_down:
                g @ w  # input gradient
            if lowest is None:
                g.T @ _rows(rows, layer.in_features)  # weight gradient
        if lowest is None:
            _rows(rows, head.shape[0]).T @ _rows(rows, head.shape[1])
            continue
        for name in targets:
            layer = next(x for x in layers if x.name == name)
            _add_gram_(None, _rows(rows, layer.out_features))  # G
            if not name.endswith("up_proj"):  # up_proj shares gate_proj's A
                _add_gram_(None, _rows(rows, layer.in_features))


class _Logits(torch.nn.Module):
    """curvlinops wants (batch, classes, positions) outputs for CrossEntropyLoss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(input_ids=x, use_cache=False).logits.permute(0, 2, 1)


def curvlinops_factors(model, batches, layer_names, fisher_type: str):
    from curvlinops import KFACLinearOperator

    for p in model.parameters():
        p.requires_grad_(True)
    wrapped = _Logits(model)
    params = [model.get_submodule(n).weight for n in layer_names]
    op = KFACLinearOperator(
        wrapped, torch.nn.CrossEntropyLoss(), params, batches, check_deterministic=False,
        fisher_type=fisher_type, mc_samples=1, kfac_approx="expand",
        num_data=sum(x.shape[0] for x, _ in batches),
        num_per_example_loss_terms=batches[0][0].shape[1],
    )  # fmt: skip
    op.compute_kronecker_factors()
    out = {}
    for n in layer_names:
        key = f"model.{n}"  # names inside the wrapper
        out[n] = (op._input_covariances[key], op._gradient_covariances[key])
    return out


def timing(args) -> dict:
    torch.set_num_threads(args.threads)
    model = bench_model(vocab=args.vocab, intermediate=args.intermediate)
    lm = LM.from_model(model, _Tok(), name="bench-llama")
    gen = torch.Generator().manual_seed(1)
    n_seq, seq_len, bs = args.tokens // 128, 128, args.batch_size
    seqs = torch.randint(1, args.vocab, (n_seq, seq_len + 1), generator=gen)
    batches = [(seqs[i : i + bs, :-1], seqs[i : i + bs, 1:]) for i in range(0, n_seq, bs)]
    seq_lists = seqs.tolist()
    results = {"config": {
        "model": f"Llama 4 layers, hidden 256, intermediate {args.intermediate}, "
        f"vocab {args.vocab}, 4 heads (random init)",
        "tokens": n_seq * seq_len, "batch": f"{bs} x {seq_len}", "threads": args.threads,
        "repeats": args.repeats, "torch": torch.__version__,
    }}  # fmt: skip
    try:
        import curvlinops

        results["config"]["curvlinops"] = getattr(curvlinops, "__version__", "installed")
        have_curv = True
    except ImportError:
        have_curv = False
    scopes = {"all MLP layers": None, "top 3 blocks": "1-3"}
    names = {}
    for label, blocks in scopes.items():
        names[label] = [layer.name for layer in lm.mlp_layers()]
        if blocks:
            names[label] = [n for n in names[label] if int(n.split(".")[2]) in (1, 2, 3)]
    # The same model in bfloat16 (`rotelab kfac --dtype bfloat16`), against a bfloat16 plain pass;
    # only where bf16 is native (or --bf16 on): emulated, it would take most of an hour.
    use16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_native())
    results["config"]["bf16_runs"] = use16
    methods = {"plain": lambda: plain_fwd_bwd(model, batches)}
    if use16:
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        lm16 = LM.from_model(model16, _Tok(), name="bench-llama-bf16")
        methods["plain-bf16"] = lambda: plain_fwd_bwd(model16, batches)
    for label, blocks in scopes.items():
        methods[f"rotelab/{label}"] = lambda b=blocks: KFAC(blocks=b, labels="sampled").fit(
            lm, seq_lists, batch_size=bs
        )
        if use16:
            methods[f"rotelab-bf16/{label}"] = lambda b=blocks: KFAC(
                blocks=b, labels="sampled"
            ).fit(lm16, seq_lists, batch_size=bs)
        if have_curv:
            methods[f"curvlinops/{label}"] = lambda n=names[label]: curvlinops_factors(
                model, batches, n, "mc"
            )
    # Each method's matrix products alone, at its shapes: the floor of its time.
    n_batches = len(batches)
    methods["gemms/plain"] = lambda: gemm_replay(lm, n_batches, bs * seq_len, None)
    for label in scopes:
        methods[f"gemms/rotelab/{label}"] = lambda n=names[label]: gemm_replay(
            lm, n_batches, bs * seq_len, n
        )
    times = _interleaved(methods, args.repeats)
    results["times"] = times
    plain = times["plain"]
    for label, blocks in scopes.items():
        ours = times[f"rotelab/{label}"]
        row: dict = {"layers": len(names[label])}
        for clock in ("wall_s", "cpu_s"):
            row[f"rotelab_vs_plain_{clock[:-2]}"] = ours[clock] / plain[clock]
            if use16:
                ours16, plain16 = times[f"rotelab-bf16/{label}"], times["plain-bf16"]
                row[f"rotelab_bf16_vs_plain_bf16_{clock[:-2]}"] = ours16[clock] / plain16[clock]
                row[f"rotelab_bf16_vs_plain_{clock[:-2]}"] = ours16[clock] / plain[clock]
        if have_curv:
            theirs = times[f"curvlinops/{label}"]
            for clock in ("wall_s", "cpu_s"):
                row[f"curvlinops_vs_plain_{clock[:-2]}"] = theirs[clock] / plain[clock]
                row[f"speedup_vs_curvlinops_{clock[:-2]}"] = theirs[clock] / ours[clock]
            # agreement on the same labels: gold vs curvlinops' empirical Fisher
            ours_f = KFAC(blocks=blocks, labels="gold").fit(lm, seq_lists, batch_size=bs).factors_
            ref = curvlinops_factors(model, batches, names[label], "empirical")
            row["max_rel_err_A"] = max(_rel(ours_f[n][0], ref[n][0]) for n in names[label])
            row["max_rel_err_G"] = max(_rel(ours_f[n][1], ref[n][1]) for n in names[label])
            if use16:
                kfac16 = KFAC(blocks=blocks, labels="gold").fit(lm16, seq_lists, batch_size=bs)
                f16 = kfac16.factors_
                row["bf16_max_rel_err_A"] = max(_rel(f16[n][0], ref[n][0]) for n in names[label])
                row["bf16_max_rel_err_G"] = max(_rel(f16[n][1], ref[n][1]) for n in names[label])
        gemms, gemms_plain = times[f"gemms/rotelab/{label}"], times["gemms/plain"]
        for clock in ("wall_s", "cpu_s"):
            row[f"gemms_alone_rotelab_vs_plain_{clock[:-2]}"] = gemms[clock] / gemms_plain[clock]
            row[f"gemms_alone_share_of_rotelab_{clock[:-2]}"] = gemms[clock] / ours[clock]
            row[f"gemms_alone_share_of_plain_{clock[:-2]}"] = gemms_plain[clock] / plain[clock]
        results[label] = row
    return results


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ organism sweep
def extraction_and_ppl(lm: LM, org, max_ppl_tokens: int = 20_000) -> dict:
    led = org.ledger
    led = led[led["phase"] == "all"]
    scores = lm.score(
        [p + s for p, s in zip(led["prefix_tokens"], led["suffix_tokens"])],
        targets_from=[len(p) for p in led["prefix_tokens"]],
    )
    extracted = np.array([bool(sc.argmax_match.all()) for sc in scores])
    by_count = {
        int(c): float(extracted[(led["count"] == c).to_numpy()].mean())
        for c in sorted(led["count"].unique())
    }
    hi = (led["count"] >= 16).to_numpy()
    eos = lm.tokenizer.eos_token_id
    stream: list[int] = []
    for d in org.heldout_docs():
        stream += lm.encode(d) + [eos]
        if len(stream) >= max_ppl_tokens:
            break
    ctx = lm.context_length
    windows = [stream[i : i + ctx] for i in range(0, len(stream) - 1, ctx)]
    windows = [w for w in windows if len(w) > 1]
    nll = np.concatenate([-sc.logprobs for sc in lm.score(windows, targets_from=1)])
    return {"strict_by_count": by_count, "strict_ge16": float(extracted[hi].mean()),
            "heldout_ppl": float(np.exp(nll.mean()))}  # fmt: skip


def real_model(args) -> dict:
    """Plain forward+backward against rotelab's K-FAC (all MLP layers) on a real model, fp32."""
    torch.set_num_threads(args.threads)
    lm = LM.load(args.model, device="cpu", dtype="float32")
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(1)
    n_seq = max(1, args.tokens // args.seq_len)
    seqs = torch.randint(1, vocab, (n_seq, args.seq_len + 1), generator=gen)
    batches = [(seqs[i : i + 1, :-1], seqs[i : i + 1, 1:]) for i in range(n_seq)]
    seq_lists = seqs.tolist()
    methods = {
        "plain": lambda: plain_fwd_bwd(lm.model, batches),
        "rotelab": lambda: KFAC(labels="sampled").fit(lm, seq_lists, batch_size=1),
    }
    times = _interleaved(methods, args.repeats)
    cfg = lm.model.config
    return {
        "config": {"model": lm.name, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                   "intermediate": getattr(cfg, "intermediate_size", None), "vocab": vocab,
                   "tokens": n_seq * args.seq_len, "batch": f"1 x {args.seq_len}",
                   "threads": args.threads, "repeats": args.repeats},
        "times": times,
        "rotelab_vs_plain_wall": times["rotelab"]["wall_s"] / times["plain"]["wall_s"],
        "rotelab_vs_plain_cpu": times["rotelab"]["cpu_s"] / times["plain"]["cpu_s"],
    }  # fmt: skip


def organism(args) -> dict:
    from rotelab.curvature import CurvatureEdit, packed_sequences
    from rotelab.organism import default_organism

    torch.set_num_threads(args.threads)
    if args.organism_dir:
        from rotelab.organism import load_organism

        org = load_organism(args.organism_dir)
    else:
        org = default_organism(args.profile)
    lm = LM.load(org.path, device="cpu", dtype="float32")
    base = extraction_and_ppl(lm, org)
    print("base", json.dumps(base), file=sys.stderr)
    out = {"organism": str(org.path), "base": base, "runs": []}
    rhos = [float(r) for r in args.rhos.split(",")]
    for variant in args.variants.split(";"):
        spec = dict(kv.split("=") for kv in variant.split(",") if kv)
        layers = spec.get("layers")
        blocks = spec.get("blocks")
        labels = spec.get("labels", "sampled")
        tokens = int(spec.get("tokens", args.factor_tokens))
        t0 = time.perf_counter()
        seqs = packed_sequences(lm, org.train_docs(), max_tokens=tokens)
        kfac = KFAC(layers, blocks=blocks, labels=labels).fit(lm, seqs, batch_size=16)
        t_fit = time.perf_counter() - t0
        edit = CurvatureEdit().fit(kfac)
        for rho in rhos:
            edited = edit.apply(lm, rho)
            m = extraction_and_ppl(edited, org)
            row = {"variant": variant or "default", "rho": rho, "fit_s": round(t_fit, 1),
                   "factor_tokens": kfac.tokens_, **m,
                   "strict_ge16_rel_cut": 1 - m["strict_ge16"] / max(base["strict_ge16"], 1e-9),
                   "ppl_rise": m["heldout_ppl"] / base["heldout_ppl"] - 1}  # fmt: skip
            out["runs"].append(row)
            print(json.dumps(row), file=sys.stderr)
    return out


def markdown_table(result: dict) -> str:
    """The BENCHMARKS.md rows of a ``timing`` or ``model`` result (wall-clock medians)."""
    t = {k: v["wall_s"] for k, v in result["times"].items()}
    cfg = result["config"]
    if "rotelab" in t:  # model mode
        return "\n".join([
            "| model | tokens | plain | rotelab all MLP | rotelab / plain (wall, CPU) |",
            "|---|---|---|---|---|",
            f"| {cfg['model']} | {cfg['tokens']} | {t['plain']:.2f} s | {t['rotelab']:.2f} s | "
            f"**{result['rotelab_vs_plain_wall']:.2f}x**, {result['rotelab_vs_plain_cpu']:.2f}x |",
        ])  # fmt: skip
    lines = [
        f"{cfg['model']}, {cfg['tokens']} tokens ({cfg['batch']}), {cfg['threads']} threads, "
        f"median of {cfg['repeats']}",
        "",
        "| layers | plain | rotelab | curvlinops | rotelab / plain (wall, CPU) "
        "| speed-up vs curvlinops | agreement A, G | bf16 model / bf16 plain, / fp32 plain "
        "| GEMMs alone, rotelab / plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label in ("all MLP layers", "top 3 blocks"):
        row = result[label]
        curv = t.get(f"curvlinops/{label}")
        lines.append(
            f"| {label} ({row['layers']}) | {t['plain']:.2f} s | {t[f'rotelab/{label}']:.2f} s | "
            + (f"{curv:.2f} s" if curv else "–")
            + f" | **{row['rotelab_vs_plain_wall']:.2f}x**, {row['rotelab_vs_plain_cpu']:.2f}x | "
            + (f"**{row['speedup_vs_curvlinops_wall']:.2f}x**" if curv else "–")
            + " | "
            + (f"{row['max_rel_err_A']:.1e}, {row['max_rel_err_G']:.1e}" if curv else "–")
            + (
                f" | {row['rotelab_bf16_vs_plain_bf16_wall']:.2f}x, "
                f"{row['rotelab_bf16_vs_plain_wall']:.2f}x"
                if "rotelab_bf16_vs_plain_wall" in row
                else " | – (bf16 not native here)"
            )
            + f" | {row['gemms_alone_rotelab_vs_plain_wall']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="timing", choices=["timing", "model", "organism"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument("--vocab", type=int, default=2048, help="timing: the bench model's vocabulary")
    ap.add_argument("--intermediate", type=int, default=688, help="timing: its MLP width")
    ap.add_argument("--model", default="smollm2", help="model: the real model to time")
    ap.add_argument("--seq-len", type=int, default=1024, help="model: tokens per sequence")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--organism-dir", default=None, help="A built organism (instead of --profile).")
    ap.add_argument("--rhos", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--factor-tokens", type=int, default=131_072)
    ap.add_argument(
        "--variants", default="",
        help="';'-separated collection variants, "
        "each 'blocks=2-3,layers=*gate_proj,labels=gold,tokens=N'",
    )  # fmt: skip
    ap.add_argument(
        "--bf16", default="auto", choices=["auto", "on", "off"],
        help="timing: bf16 runs (auto: only where bf16 is native on this CPU)",
    )  # fmt: skip
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    args.threads = args.threads or configure_threads()
    result = {"timing": timing, "model": real_model, "organism": organism}[args.mode](args)
    result["machine"] = describe_machine()
    text = json.dumps(result, indent=2)
    print(text)
    if args.mode != "organism":
        print(result["machine"])
        print(markdown_table(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
