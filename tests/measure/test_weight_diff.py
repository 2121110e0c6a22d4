"""Weight-diff localization: relative change per tensor and block, LoRA deltas rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.weight_diff import lora_deltas, summarize, weight_diff
from rotelab.options import RunOptions
from rotelab.pipelines.diff import diff


def _copy_with(tiny_llama_dir, tmp_path, name, change):
    lm = LM.load(tiny_llama_dir, dtype="float32")
    with torch.no_grad():
        change(lm.model)
    return lm.save(tmp_path / name)


def test_a_change_in_one_block_is_found_there_and_nowhere_else(tiny_llama_dir, tmp_path):
    def bump(model):  # block 1's up projection: every weight +50%, one weight x3
        w = model.model.layers[1].mlp.up_proj.weight
        w.mul_(1.5)
        w[0, 0] = w[0, 0] * 2

    changed = _copy_with(tiny_llama_dir, tmp_path, "b", bump)
    table = weight_diff(tiny_llama_dir, changed)
    row = table.set_index("name").loc["model.layers.1.mlp.up_proj.weight"]
    n = row["numel"]
    nonzero = int((LM.load(tiny_llama_dir).model.model.layers[1].mlp.up_proj.weight != 0).sum())
    assert row["changed_1pct"] == row["changed_10pct"] == nonzero and row["changed_100pct"] == 1
    assert row["block"] == 1 and row["module"] == "mlp.up_proj.weight"
    others = table[table["name"] != "model.layers.1.mlp.up_proj.weight"]
    assert (others["changed_1pct"] == 0).all() and (others["rel_change"] == 0).all()
    s = summarize(table)
    assert s["fraction_changed"]["1pct"] == pytest.approx(nonzero / table["numel"].sum())
    assert s["by_block"]["0"]["1pct"] == 0 and s["by_block"]["1"]["1pct"] > 0
    assert s["lower_vs_upper"]["upper_half"]["1pct"] > s["lower_vs_upper"]["lower_half"]["1pct"]
    assert n == sum(int(c) for c in row["hist"]) + (n - nonzero)  # every changed weight binned


def test_lora_deltas_equal_the_merged_model(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    lm = LM.load(tiny_llama_dir, dtype="float32")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    peft_model = get_peft_model(lm.model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: give it something to rebuild
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged = peft_model.merge_and_unload()
    LM.from_model(merged, lm.tokenizer).save(tmp_path / "merged")
    from_adapter = weight_diff(tiny_llama_dir, adapter).set_index("name")
    from_merged = weight_diff(tiny_llama_dir, tmp_path / "merged").set_index("name")
    assert len(from_adapter) == 4  # q_proj and up_proj of 2 blocks
    for name, row in from_adapter.iterrows():
        ref = from_merged.loc[name]
        assert row["rel_change"] == pytest.approx(ref["rel_change"], rel=1e-4)
        assert abs(int(row["changed_1pct"]) - int(ref["changed_1pct"])) <= 2  # float rounding
    deltas = dict(lora_deltas(adapter))
    assert set(deltas) == set(from_adapter.index)


def test_command_writes_a_run_and_refuses_mismatches(tiny_llama_dir, tiny_model_dir, tmp_path):
    changed = _copy_with(tiny_llama_dir, tmp_path, "b",
                         lambda m: m.model.layers[0].mlp.down_proj.weight.mul_(2))  # fmt: skip
    result = diff(tiny_llama_dir, changed, run=RunOptions(tmp_path / "run", progress=False))
    assert result.summary["by_block"]["0"]["1pct"] > 0
    assert (result.run_dir / "report.html").is_file()
    res = CliRunner().invoke(app, ["diff", str(tiny_llama_dir), str(changed), "-o",
                                   str(tmp_path / "run2"), "--json", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["by_block"]["1"]["1pct"] == 0
    if "gpt2" in str(tiny_model_dir) or "neox" in str(tiny_model_dir):
        with pytest.raises(RotelabError, match="not the same architecture"):
            diff(tiny_llama_dir, tiny_model_dir, run=RunOptions(tmp_path / "x"))
    with pytest.raises(RotelabError, match="does not exist"):
        diff(tiny_llama_dir, tmp_path / "nope", run=RunOptions(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    assert np.isfinite(result.tensors["rel_change"]).all()
