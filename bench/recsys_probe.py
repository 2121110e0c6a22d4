"""Diagnostic: does the long-term-interest signal survive into VISTA's summary? (issue 23)

Trains VISTA on the synthetic lifelong world (as ``rotelab recsys train`` does, one seed), then
fits linear probes that tell, per topic, whether the topic is one of a user's long-term interests
(the ones seen only in the first 10% of the history) from three views of the same fresh users'
histories: the true topic histogram (the ceiling a perfect stage 1 could keep), VISTA's stage-1
state (the mean ``φ(k)vᵀ``) and its summary tokens (what the cache stores and stage 2 reads).
A probe is a ridge regression on standardized features (penalty by leave-one-out) fitted on the
users for whom the topic is not short-term (2/3 of the users fit, 1/3 score); its AUC of a
long-term topic against a topic of no interest, averaged over topics, is printed. An untrained
VISTA is probed too. Probes need users: with 200 fitting users every view scored about 0.5.

Run: ``python bench/recsys_probe.py [--users 3000] [--epochs 4] [--length 1000]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from rotelab.recsys import ModelConfig, SyntheticSpec, SyntheticWorld, auc, build_model, fit


def _probe(x: np.ndarray, long: np.ndarray, short: np.ndarray, n_fit: int) -> float:
    """Per topic, a linear (ridge) probe fitted on the users for whom the topic is not short-term:
    is it long-term? The mean over topics of its AUC on the held-out users."""
    mean, std = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-9
    x = (x - mean) / std
    aucs = []
    for t in range(long.shape[1]):
        fit_rows = np.flatnonzero(~short[:n_fit, t])
        test_rows = n_fit + np.flatnonzero(~short[n_fit:, t])
        if long[fit_rows, t].all() or not long[fit_rows, t].any():
            continue
        probe = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(x[fit_rows], long[fit_rows, t])
        aucs.append(auc(probe.predict(x[test_rows]), long[test_rows, t]))
    return float(np.nanmean(aucs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--train-length", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--length", type=int, default=1000, help="probed history length")
    ap.add_argument("--probe-users", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = SyntheticWorld(SyntheticSpec(seed=args.seed))
    data = world.batch(range(args.users), args.train_length)
    order = np.random.default_rng(args.seed).permutation(len(data))
    n_val = len(data) // 10
    fit_set, val = data.take(np.sort(order[n_val:])), data.take(np.sort(order[:n_val]))

    users = 10**9 + np.arange(args.probe_users)
    n_topics = world.spec.n_topics
    hist = np.stack([world.history(int(u), args.length) for u in users])
    long = np.zeros((len(users), n_topics), bool)
    short = np.zeros_like(long)
    for i, u in enumerate(users):
        s, lt = world.interests(int(u))
        long[i, lt], short[i, s] = True, True
    cats = world.categories[hist] - 1
    histogram = np.stack([np.bincount(c, minlength=n_topics) for c in cats]) / args.length
    n_fit = 2 * len(users) // 3
    print(f"probe AUC, long-term topics vs no interest, L = {args.length}, "
          f"{len(users) - n_fit} scored users")  # fmt: skip
    print(f"  topic histogram (ceiling): {_probe(histogram, long, short, n_fit):.3f}")
    cfg = ModelConfig("vista", world.n_items, n_topics)
    model = build_model(cfg, world.categories, seed=args.seed)
    stages = [("untrained", 0)] + (
        [(f"trained {args.epochs} epochs", args.epochs)] * (args.epochs > 0)
    )
    for label, epochs in stages:
        if epochs:
            log = fit(model, fit_set, epochs=epochs, lr=1e-2, seed=args.seed, val=val,
                      schedule="cosine")  # fmt: skip
            print("  val AUC per epoch:", [round(e["val_auc"], 3) for e in log])
        with torch.no_grad():
            s, n = model.fold(torch.as_tensor(hist))
            summary = model.stage1.summarize(s, n).reshape(len(users), -1).numpy()
            state = (s / n[:, None, None, None]).reshape(len(users), -1).numpy()
        print(f"  VISTA {label}: state {_probe(state, long, short, n_fit):.3f}, "
              f"summary {_probe(summary, long, short, n_fit):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
