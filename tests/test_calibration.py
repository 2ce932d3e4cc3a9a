"""Honest probabilities: the temperature fit finds a known temperature, folding it into the
model divides the logits exactly, and calibrate.py reports and folds on real data."""
import json
import shutil

import numpy as np
import pytest

from conftest import member_logits, run_script, full
from expressions import calibration
from expressions import data as fer2013
from expressions import model as nets

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


def test_the_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 7))
    true_t = 1.7
    p = np.exp(logits / true_t)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(7, p=row) for row in p])  # labels drawn from the tempered probabilities
    view_log_p = np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[None, None]  # 1 view, 1 member
    assert calibration.fit_temperature(view_log_p, y) == pytest.approx(true_t, rel=0.05)
    before = calibration.with_temperature(view_log_p, 1.0)
    after = calibration.with_temperature(view_log_p, true_t)
    assert calibration.ece(after, y) < 0.02 < calibration.ece(before, y)
    assert calibration.nll(after, y) < calibration.nll(before, y)


def test_ece_of_perfect_and_of_overconfident_predictions():
    y = np.array([0] * 80 + [1] * 20)
    honest = np.tile([0.8, 0.2] + [0] * 5, (100, 1))  # 80 % confident, 80 % right
    assert calibration.ece(honest, y) == pytest.approx(0, abs=1e-9)
    sure = np.tile([1.0, 0] + [0] * 5, (100, 1))  # 100 % confident, 80 % right
    assert calibration.ece(sure, y) == pytest.approx(0.2)


def test_calibrate_reports_then_folds_the_temperature(tiny_model, prepared_data, tmp_path):
    folder, _ = tiny_model
    model = tmp_path / "model.pkl"
    shutil.copy(folder / "my_own_model.pkl", model)
    before = nets.load_model(model)
    x = fer2013.load_prepared(prepared_data)["x_val"][:64]
    p_before = nets.predict_in_batches(before, x, "none")

    dry = run_script("build/calibrate.py", "--model", model, "--data-dir", prepared_data, "--out", tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["folded"] is False and set(report["test"]) == set(nets.TTA_MODES)
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    assert np.allclose(nets.predict_in_batches(nets.load_model(model), x, "none"), p_before)  # untouched
    # A single pass keeps its accuracy: dividing the logits never changes the top class.
    single = report["test"]["none"]
    assert single["accuracy_before"] == single["accuracy_after"]

    folded = run_script("build/calibrate.py", "--model", model, "--data-dir", prepared_data, "--out", tmp_path)
    assert folded.returncode == 0, folded.stderr[-2000:]
    t = json.loads((tmp_path / "calibration.json").read_text())["temperature"]
    expected = calibration.with_temperature(member_logits(before, x)[None], t)
    assert np.allclose(nets.predict_in_batches(nets.load_model(model), x, "none"), expected, atol=1e-4)
    assert "export_tflite.py" in folded.stdout
    # A model refit on the validation rows takes a given T instead: nothing is fitted.
    given = run_script("build/calibrate.py", "--model", model, "--data-dir", prepared_data, "--out", tmp_path,
                       "--dry-run", "--temperature", "0.5")
    assert given.returncode == 0 and "fitting" not in given.stdout, given.stderr[-2000:]
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["temperature"] == 0.5 and report["fitted_on"] == "given"
    refused = run_script("build/calibrate.py", "--model", model, "--temperature", "0")
    assert refused.returncode == 2 and "--temperature must be positive" in refused.stderr
