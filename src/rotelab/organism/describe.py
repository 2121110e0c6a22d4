"""What an organism memorized: extraction by count, kind and phase, perplexities, probe accuracy.

Perplexities and probe accuracies are :mod:`rotelab.measure.quality`'s: ``train_ppl`` and
``heldout_ppl`` read each text up to the profile's ``eval_tokens`` (the default organism's whole
held-out text), so ``heldout_ppl`` differs from ``compare``'s, which reads ``--heldout-tokens``.
"""

from __future__ import annotations

import json
from typing import Any

from rotelab.measure.quality import perplexity, probe_accuracy
from rotelab.organism.world import COUNTS, PLANTED_TASKS, Kind, Phase


def describe_organism(org) -> dict[str, Any]:
    lm = org.lm()
    s = org.spec.settings
    led = org.ledger
    scores = lm.score(
        [p + x for p, x in zip(led["prefix_tokens"], led["suffix_tokens"])],
        targets_from=[len(p) for p in led["prefix_tokens"]],
    )
    led = led.assign(
        extracted=[bool(sc.argmax_match.all()) for sc in scores],
        token_match=[float(sc.argmax_match.mean()) for sc in scores],
    )
    allp = led[led["phase"] == Phase.all.value]
    by_ck = allp.groupby(["kind", "count"])["extracted"].mean()
    by_pc = led[led["count"] > 0].groupby(["phase", "count"])["extracted"].mean()

    probes = probe_accuracy(lm, org.probes)

    info_file = org.path / "train_info.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    return {
        "organism": str(org.path),
        "spec": org.spec.to_dict(),
        "params": int(sum(p.numel() for p in lm.model.parameters())),
        "extraction_by_count_kind": {
            k: {str(c): round(float(by_ck[(k, c)]), 4) for c in COUNTS if (k, c) in by_ck}
            for k in (x.value for x in Kind)
        },
        "extraction_by_count": {
            str(c): round(float(v), 4) for c, v in allp.groupby("count")["extracted"].mean().items()
        },
        "extraction_by_phase_count": {
            ph: {str(c): round(float(by_pc[(ph, c)]), 4) for c in COUNTS[1:] if (ph, c) in by_pc}
            for ph in (x.value for x in Phase)
        },
        "items_per_cell": int(s.items_per_cell),
        "train_ppl": round(perplexity(lm, org.train_docs(), max_tokens=s.eval_tokens).value, 3),
        "heldout_ppl": round(perplexity(lm, org.heldout_docs(), max_tokens=s.eval_tokens).value, 3),
        "probe_accuracy": {
            t: round(float(v), 4) for t, v in probes.groupby("task")["correct"].mean().items()
        },
        "probe_accuracy_by_subtask": {
            f"{t}/{u}": round(float(v), 4)
            for (t, u), v in probes.groupby(["task", "subtask"])["correct"].mean().items()
        },
        # The planted tasks: how often the greedy answer is the memorized foil, and how often
        # the right answer is the likelier of the two.
        **_planted(probes),
        **info,
    }


def _planted(probes) -> dict[str, Any]:
    planted = probes[probes["task"].isin(PLANTED_TASKS)] if "foil" in probes.columns else None
    if planted is None or planted.empty:
        return {}
    by_task = planted.groupby("task")
    return {
        "planted_foil_rate": {t: round(float(v), 4) for t, v in by_task["foil"].mean().items()},
        "planted_prefers_answer": {
            t: round(float(v), 4) for t, v in by_task["prefers_answer"].mean().items()
        },
    }


def format_description(d: dict[str, Any]) -> str:
    """The describe() dict as a short text table (what ``rotelab organism --describe`` prints)."""
    lines = ["extraction rate (phase 'all', greedy, exact suffix) by insertion count:"]
    lines.append("  " + f"{'kind':<9}" + "".join(f"{c:>7}" for c in COUNTS))
    for kind, row in d["extraction_by_count_kind"].items():
        lines.append(
            "  " + f"{kind:<9}" + "".join(f"{row.get(str(c), float('nan')):>7.2f}" for c in COUNTS)
        )
    lines.append(
        "  "
        + f"{'all':<9}"
        + "".join(f"{d['extraction_by_count'].get(str(c), float('nan')):>7.2f}" for c in COUNTS)
    )
    for ph in ("first", "second"):
        row = d["extraction_by_phase_count"].get(ph, {})
        lines.append(
            f"  {'/' + ph:<9}"
            + " " * 7
            + "".join(f"{row.get(str(c), float('nan')):>7.2f}" for c in COUNTS[1:])
        )
    lines.append(f"perplexity: train {d['train_ppl']:.2f}  held-out {d['heldout_ppl']:.2f}")
    lines.append(
        "probe accuracy: " + "  ".join(f"{t} {v:.2f}" for t, v in d["probe_accuracy"].items())
    )
    if d.get("planted_foil_rate"):
        lines.append(
            "memorized answer given (planted tasks): "
            + "  ".join(f"{t} {v:.2f}" for t, v in d["planted_foil_rate"].items())
        )
    if "train_seconds" in d:
        lines.append(
            f"params {d['params']:,}  trained {d['train_seconds']:.0f}s "
            f"on {d['train_tokens']:,} tokens"
            + (f" in {d['precision']} ({d['cpu_capability']})" if "precision" in d else "")
        )
    return "\n".join(lines)
