"""`samtune runs`: the run directories under runs/, newest first, with their status."""

from __future__ import annotations

import json
import os
import time

from typer.testing import CliRunner

from samtune.cli import app
from samtune.rundir import RUN_MARK, RunLock, find_runs

runner = CliRunner()


def _fake_run(path, config: str, checkpoint: int | None = None):
    path.mkdir(parents=True)
    (path / RUN_MARK).write_text("written by samtune train\n")
    (path / "config.yaml").write_text(config)
    if checkpoint is not None:
        (path / f"checkpoint-{checkpoint}").mkdir()
        (path / f"checkpoint-{checkpoint}" / "trainer_state.json").write_text("{}")
        (path / f"checkpoint-{checkpoint + 3}").mkdir()  # a save that did not finish: no trainer_state.json


def test_finished_interrupted_failed_and_running_runs_newest_first(tmp_path, text_model_dir, text_csv):
    root = tmp_path / "runs"
    done = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(root / "finished"),
            "--max-steps",
            "2",
        ],
    )
    assert done.exit_code == 0, done.output
    config = "model: {name: m}\ndata: {dataset: d.csv}\nsam: {rho: 0.1, variant: looksam}\ntask: text-regression\n"
    _fake_run(root / "cmp" / "sam" / "seed-42", config, checkpoint=6)
    _fake_run(root / "broken", "model: {name: m}\nsam: {rho: 0}\n")
    _fake_run(root / "busy", config)
    now = time.time()
    for i, name in enumerate(["finished", "cmp/sam/seed-42", "broken", "busy"]):  # oldest first
        os.utime(root / name, (now - 100 + i, now - 100 + i))
        for p in (root / name).iterdir():
            os.utime(p, (now - 100 + i, now - 100 + i))
    with RunLock(root / "busy"):
        runs = find_runs(root)
        listed = runner.invoke(app, ["runs", str(root), "--json"])
    assert [r["run"] for r in runs] == ["busy", "broken", "cmp/sam/seed-42", "finished"]
    status = {r["run"]: r["status"] for r in runs}
    assert status == {
        "busy": "running",
        "broken": "failed",
        "cmp/sam/seed-42": "interrupted at step 6",
        "finished": "finished",
    }
    finished = runs[-1]
    metrics = json.loads((root / "finished" / "metrics.json").read_text())
    assert finished["metric"] == "eval_accuracy" and finished["value"] == metrics["eval_accuracy"]
    assert finished["steps"] == 2 and finished["sam"] == "ascent_fraction rho 0.1"  # the default
    interrupted = runs[2]
    assert (
        interrupted["sam"] == "looksam rho 0.1" and interrupted["metric"] == "eval_mse" and interrupted["value"] is None
    )
    assert runs[1]["sam"] == "none (rho 0)"
    assert listed.exit_code == 0 and [r["run"] for r in json.loads(listed.output)] == [r["run"] for r in runs]
    table = runner.invoke(app, ["runs", str(root)])
    assert table.exit_code == 0 and "interrupted at step 6" in " ".join(table.output.split())
    assert "no run directories" in runner.invoke(app, ["runs", str(tmp_path / "none")]).output


def test_a_run_with_a_malformed_config_or_metrics_is_listed_as_unreadable_beside_the_rest(tmp_path):
    root = tmp_path / "runs"
    good = "model: {name: m}\ndata: {dataset: d.csv}\nsam: {rho: 0.05}\n"
    _fake_run(root / "good", good, checkpoint=3)
    _fake_run(root / "bad-yaml", "model: {name: [unclosed\n")
    _fake_run(root / "list-yaml", "- not\n- a mapping\n")
    _fake_run(root / "binary-yaml", "")
    (root / "binary-yaml" / "config.yaml").write_bytes(b"\xff\xfe\x00model")
    for name, text in {
        "bad-json": "{not json",
        "list-json": "[1, 2]",
        "text-metric": '{"eval_accuracy": "high"}',
        "text-time": '{"eval_accuracy": 0.5, "wall_time": "long"}',
    }.items():
        _fake_run(root / name, good)
        (root / name / "metrics.json").write_text(text)
    runs = {r["run"]: r for r in find_runs(root)}
    assert runs["good"]["status"] == "interrupted at step 3"
    unreadable = {
        "bad-yaml": "config.yaml",
        "list-yaml": "config.yaml",
        "binary-yaml": "config.yaml",
        "bad-json": "metrics.json",
        "list-json": "metrics.json",
        "text-metric": "metrics.json",
        "text-time": "metrics.json",
    }
    for name, file in unreadable.items():
        assert runs[name]["status"].startswith(f"unreadable: {file}"), (name, runs[name]["status"])
        assert runs[name]["value"] is None and runs[name]["wall_time"] is None
    table = runner.invoke(app, ["runs", str(root)])
    assert table.exit_code == 0, table.output
    flat = " ".join(table.output.split())
    assert "interrupted at step 3" in flat and flat.count("unreadable: ") == len(unreadable)
    listed = runner.invoke(app, ["runs", str(root), "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.output)) == len(unreadable) + 1
