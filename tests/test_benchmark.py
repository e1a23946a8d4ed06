"""The benchmark command on small precomputed features: its JSON, plot and errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402

RECORD_KEYS = {
    "classifier",
    "uncertainty",
    "strategy",
    "auc",
    "clicks_fraction",
    "rounds",
    "proposals_accepted",
    "mean_purity",
    "final_completeness",
    "seconds",
}


@pytest.fixture
def feature_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(["bag", "shoe", "shirt"], 40)
    centres = {"bag": [3, 0, 0], "shoe": [0, 3, 0], "shirt": [0, 0, 3]}
    features = np.array([centres[label] for label in labels]) + rng.normal(
        scale=1.5, size=(120, 3)
    )
    np.save(tmp_path / "X.npy", features)
    np.save(tmp_path / "y.npy", labels)
    return tmp_path / "X.npy", tmp_path / "y.npy"


def run(feature_files, tmp_path, *extra):
    features, labels = feature_files
    arguments = [
        "--features-file", str(features), "--labels-file", str(labels),
        "--classifiers", "lr,dt", "--uncertainty", "entropy,margin",
        "--strategy", "paper,guarded-pool", "--batch-size", "20", "--jobs", "1",
        "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png"),
        "--quiet", *extra,
    ]  # fmt: skip
    assert benchmark.main(arguments) == 0
    return json.loads((tmp_path / "out.json").read_text())


def test_json_has_one_record_per_cell_and_the_baselines(
    feature_files, tmp_path, capsys
):
    report = run(feature_files, tmp_path)

    assert len(report["runs"]) == 2 * 2 * 2
    for record in report["runs"]:
        assert RECORD_KEYS <= set(record)
        assert 0 <= record["auc"] <= 1
    assert {"manual", "oracle", "initial_completeness"} <= set(report["baselines"])
    assert (report["n_images"], report["n_labels"], report["seed"]) == (120, 3, 0)
    assert report["extractor"] == "file:X.npy"
    assert (tmp_path / "out.png").stat().st_size > 10_000

    printed = capsys.readouterr().out
    assert "Table I — AUC" in printed and "Table II — seconds" in printed
    assert "oracle lower bound" in printed


def test_same_seed_same_figures(feature_files, tmp_path):
    first = run(feature_files, tmp_path)
    second = run(feature_files, tmp_path)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first["runs"]]
    again = [{k: v for k, v in r.items() if k != "seconds"} for r in second["runs"]]
    assert strip == again


def test_bad_inputs_name_the_option_and_what_to_do(feature_files, tmp_path):
    features, _ = feature_files
    script = str(REPO / "scripts" / "benchmark.py")
    answer = subprocess.run(
        [sys.executable, script, "--features-file", str(features)],
        capture_output=True,
        text=True,
    )
    assert answer.returncode != 0
    assert "--features-file and --labels-file go together" in answer.stderr

    answer = subprocess.run(
        [sys.executable, script, "--strategy", "greedy"], capture_output=True, text=True
    )
    assert "unknown strategy greedy; choose from" in answer.stderr
