"""`rotelab bands`: band ratios per set and the task-curvature correspondence, inputs first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import TEXT
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.curvature import KFAC, packed_sequences
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.quality import probe_accuracy
from rotelab.options import RunOptions
from rotelab.pipelines.bands import bands, read_tasks

TASKS = [
    {"prompt": "The cat sat on the", "answer": " mat", "task": "recall"},
    {"prompt": "One two three", "answer": " four", "task": "count", "id": "c1"},
    {"prompt": "Red green", "answer": " blue", "task": "count"},
]


@pytest.fixture(scope="module")
def llama_factors(tiny_llama_dir):
    lm = LM.load(tiny_llama_dir, dtype="float32")
    return KFAC().fit(lm, packed_sequences(lm, [TEXT], seq_len=31, max_tokens=300))


@pytest.fixture
def sets(tmp_path):
    a, b, tasks = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "tasks.jsonl"
    a.write_text(TEXT)
    b.write_text(" ".join(reversed(TEXT.split())))
    tasks.write_text("\n".join(json.dumps(t) for t in TASKS) + "\n")
    return a, b, tasks


def test_user_sets_and_tasks_on_any_model(tiny_llama_dir, llama_factors, sets, tmp_path):
    a, b, tasks = sets
    result = bands(
        str(tiny_llama_dir), llama_factors, [f"first={a}", f"second={b}"], reference="second",
        rho=0.5, tasks=tasks, tokens=200, run=RunOptions(tmp_path / "run", progress=False),
    )  # fmt: skip
    table = result.bands
    assert set(table["dataset"]) == {"first", "second"}
    assert np.allclose(table.loc[table["dataset"] == "second", "ratio"], 1.0)
    assert list(result.summary["band_ratio"]) == ["first"]
    assert len(result.items) == 3 and set(result.items["task"]) == {"recall", "count"}
    lm = LM.load(tiny_llama_dir, dtype="float32")
    before = probe_accuracy(lm, read_tasks(tasks))["correct"].to_numpy()
    assert (result.items["correct_before"].to_numpy() == before).all()
    assert (result.items["removed_strength"] > 0).all()
    corr = result.summary["correspondence"]
    assert corr["items"]["n"] == int(before.sum())
    assert (result.run_dir / "report.html").is_file()


@pytest.mark.slow
def test_organism_defaults_band_direction_and_correspondence(tiny_organism, tmp_path):
    lm = tiny_organism.lm()
    kfac = KFAC().fit(lm, packed_sequences(lm, tiny_organism.train_docs(), max_tokens=8192))
    result = bands(
        str(tiny_organism.path), kfac, rho=0.6, run=RunOptions(tmp_path / "run", progress=False)
    )
    ratio = result.summary["band_ratio"]["memorized"]
    # the paper's direction: memorized text leans on the low-curvature bands, clean on the top
    assert ratio["50-100%"] > 1.0 > ratio["0-10%"]
    probes = tiny_organism.probes
    assert len(result.items) == len(probes)
    assert (result.items["correct_before"].to_numpy()
            == probe_accuracy(lm, probes)["correct"].to_numpy()).all()  # fmt: skip
    by_task = {t["task"]: t for t in result.summary["correspondence"]["by_task"]}
    assert set(by_task) == set(probes["task"])
    page = (result.run_dir / "report.html").read_text()
    assert 'data-plot="correspondence"' in page and 'data-plot="bands_memorized"' in page


def test_cli_prints_the_table(tiny_llama_dir, llama_factors, sets, tmp_path):
    a, b, _ = sets
    factors = tmp_path / "factors"
    llama_factors.save(factors)
    res = CliRunner().invoke(app, [
        "bands", "--model", str(tiny_llama_dir), "--factors", str(factors), "--data", f"x={a}",
        "--data", f"clean={b}", "--tokens", "200", "--out", str(tmp_path / "o"), "--quiet",
        "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["reference"] == "clean"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-d only={a}", "two or more"),
        ("-d {a}", "must be NAME=FILE"),
        ("-d x={a} -d x={b}", "names 'x' twice"),
        ("-d x={a} -d y={b} --reference z", "--reference 'z' is not one of"),
        ("-d x={a} -d y={b} --rho 1.5", "rho must be in"),
        ("-d x={a} -d y={b} --rho 0.5", "give --tasks"),
        ("-d x={a} -d y={b} --rho 0.5 --tasks {bad}", "line 1 has no 'answer'"),
        ("-d x={a} -d y={b} --tokens 0", "--tokens must be >= 1"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    tiny_llama_dir, llama_factors, sets, tmp_path, args, message
):
    a, b, _ = sets
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "task": "t"}\n')
    factors = tmp_path / "factors"
    llama_factors.save(factors)
    argv = args.format(a=a, b=b, bad=bad).split()
    res = CliRunner().invoke(app, [
        "bands", "--model", str(tiny_llama_dir), "--factors", str(factors), *argv,
        "--out", str(tmp_path / "o"),
    ])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_not_an_organism_needs_factors_and_sets(tiny_llama_dir, sets, tmp_path, no_organism):
    a, b, _ = sets
    with pytest.raises(RotelabError, match="give two or more --data"):
        bands(str(tiny_llama_dir), run=RunOptions(tmp_path / "o"))
    with pytest.raises(RotelabError, match="--factors"):
        bands(str(tiny_llama_dir), None, [f"x={a}", f"y={b}"], run=RunOptions(tmp_path / "o"))
    with pytest.raises(RotelabError, match="rho must be in"):
        bands(rho=0.0, run=RunOptions(tmp_path / "o"))  # the default organism is never built
    assert not (tmp_path / "o").exists()


def test_a_set_of_prefix_suffix_windows_reads_as_their_joined_text(
    tiny_llama_dir, llama_factors, sets, tmp_path
):
    a, _, _ = sets
    windows = tmp_path / "windows.jsonl"
    words = a.read_text().split()
    windows.write_text("".join(
        json.dumps({"prefix": " ".join(words[i : i + 6]), "suffix": " " + " ".join(
            words[i + 6 : i + 10])}) + "\n" for i in range(0, 40, 10)
    ))  # fmt: skip
    result = bands(
        str(tiny_llama_dir), llama_factors, [f"w={windows}", f"clean={a}"], tokens=10_000,
        run=RunOptions(tmp_path / "run", progress=False),
    )  # fmt: skip
    words_read = sum(len(json.loads(x)["prefix"] + json.loads(x)["suffix"]) > 0
                     for x in windows.read_text().splitlines())  # fmt: skip
    assert words_read == 4 and result.summary["sets"]["w"] > 4 * 4  # prefix and suffix tokens


def test_correspondence_of_an_edit_with_a_rho_per_layer(
    tiny_llama_dir, llama_factors, sets, tmp_path
):
    a, b, tasks = sets
    config = tmp_path / "rho.json"
    config.write_text(json.dumps({"blocks": {"1": {"up_proj": 0.5}}}))
    result = bands(
        str(tiny_llama_dir), llama_factors, [f"x={a}", f"clean={b}"], rho_config=config,
        tasks=tasks, tokens=200, run=RunOptions(tmp_path / "run", progress=False),
    )  # fmt: skip
    # the edit of that one layer: its removed strength, and nothing else's
    from rotelab.curvature import CurvatureEdit, removed_strength

    lm = LM.load(tiny_llama_dir, dtype="float32")
    probes = read_tasks(tasks)
    prompts = [lm.encode(p) for p in probes["prompt"]]
    expected = removed_strength(
        lm, CurvatureEdit().fit(llama_factors), {"model.layers.1.mlp.up_proj": 0.5},
        [p + lm.encode(x) for p, x in zip(prompts, probes["answer"])], [len(p) for p in prompts],
    )  # fmt: skip
    assert np.allclose(result.items["removed_strength"], expected)
    assert (expected > 0).all()
    assert result.summary["rho_config"]["blocks"] == {"1": {"up_proj": 0.5}}
    with pytest.raises(RotelabError, match="not both"):
        bands(str(tiny_llama_dir), llama_factors, [f"x={a}", f"clean={b}"], rho=0.5,
              rho_config=config, tasks=tasks, run=RunOptions(tmp_path / "x"))  # fmt: skip
