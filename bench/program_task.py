"""Check: can a small model learn the program task? Pass@k(m) before and after training.

A fresh Llama of the tiny organism's shape and tokenizer (2 blocks, hidden 128, vocab 1024; or
``--blocks/--hidden``) is trained with :func:`rotelab.train.train` on the texts of the task's
pretraining and fine-tuning splits (``task: ... .`` / ``program: ...``, packed with end-of-text
into 128-token rows), then asked for ``--n`` programs per problem at temperature 0.8 (batched,
:func:`rotelab.tasks.programs.sample_pass_counts`), graded by the interpreter on the hidden tests.
Printed: Pass@1, Pass@5 and Pass@5(3) with 95% bootstrap CIs over problems, on problems it was
trained on (memorized) and on held-out evaluation problems (generalized), and greedy accuracy.

Not a speed benchmark: it shows the task is learnable at this size and what separates recall
of seen problems from solving new ones, the ground the memorization-barrier experiment needs.

Run: ``python bench/program_task.py [--steps 600] [--n 10] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from rotelab.lm import GREEDY, LM, Sampler  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.passk import pass_at_k_table  # noqa: E402
from rotelab.tasks.programs import TaskSpec, generate_task, sample_pass_counts  # noqa: E402
from rotelab.train import TrainConfig, train  # noqa: E402


def batches(rows: list[list[int]], size: int, seed: int):
    rng = random.Random(seed)
    while True:
        yield torch.tensor(rng.sample(rows, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument(
        "--tokenizer", default=os.environ.get("ROTELAB_TEST_ORGANISM", "/work/tiny-org")
    )
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    task = generate_task(TaskSpec(seed=args.seed, n_eval=args.eval))
    seen = task.split("pretrain") + task.split("finetune")
    stream: list[int] = []
    for p in random.Random(args.seed).sample(seen, len(seen)):
        stream += tok.encode(p.text()) + [tok.eos_token_id]
    seq = 129
    rows = [stream[i : i + seq] for i in range(0, len(stream) - seq, seq)]
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden,
                      intermediate_size=int(2.75 * args.hidden), num_hidden_layers=args.blocks,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    t0 = time.perf_counter()
    train_cfg = TrainConfig(steps=args.steps, lr=3e-3, warmup_steps=30, seed=args.seed)
    log = train(model, batches(rows, 32, args.seed), train_cfg)
    seconds = time.perf_counter() - t0
    lm = LM.from_model(model.eval(), tok, name="program-llama")
    result = {"cpu": cpu_capability(), "threads": torch.get_num_threads(), "seed": args.seed,
              "params": lm.num_parameters(), "steps": args.steps, "train_s": round(seconds, 1),
              "tokens": args.steps * 32 * 128, "loss_first": log[0]["loss"],
              "loss_last": log[-1]["loss"], "rows": len(rows)}  # fmt: skip
    trained = random.Random(1).sample(seen, args.eval)
    for name, problems in (("trained", trained), ("eval", task.split("eval"))):
        counts, _ = sample_pass_counts(lm, problems, args.n, sampler=Sampler(temperature=0.8),
                                       seed=args.seed)  # fmt: skip
        table, _ = pass_at_k_table(counts, [1, 5], [1, 3], seed=args.seed)
        greedy, _ = sample_pass_counts(lm, problems, 1, sampler=GREEDY)
        result[name] = {
            "greedy": float(greedy.c.mean()),
            **{f"pass@{r.k}({r.m})": [round(r.pass_at_k, 3), round(r.ci_low, 3),
                                      round(r.ci_high, 3)] for r in table.itertuples()},
        }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
