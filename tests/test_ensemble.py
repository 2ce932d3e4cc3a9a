"""The committed model: an ensemble of trained runs in one model file (its reports, its
calibration folded into every member)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, assert_clean_error, member_logits, needs_shared, run_script, full
from expressions import UserError, calibration
from expressions import data as fer2013
from expressions import model as nets

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


@pytest.fixture(scope="module")
def two_runs(tiny_model, prepared_data, tmp_path_factory):
    """The session's tiny model and a second tiny run (seed 2), as a folder of members."""
    folder = tmp_path_factory.mktemp("members")
    for name in ("my_own_model.pkl", "metrics.json"):
        shutil.copy(tiny_model[0] / name, folder / ("first.pkl" if name.endswith(".pkl") else "first_metrics.json"))
    second = run_script("train.py", *TINY, "--epochs", "2", "--seed", "2", "--data-dir", prepared_data,
                        "--out", folder, "--model-name", "second", "--no-evaluate")
    assert second.returncode == 0, second.stderr[-2000:]
    return folder


@needs_shared
def test_ensemble_averages_its_members_reports_and_calibrates(two_runs, prepared_data, tmp_path):
    out = tmp_path / "my_own_model.pkl"
    made = run_script("build/ensemble.py", two_runs / "first.pkl", two_runs / "second.pkl", "--out", out,
                      "--data-dir", prepared_data)
    assert made.returncode == 0, made.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["model"] for m in metrics["members"]] == [str(two_runs / "first.pkl"), str(two_runs / "second.pkl")]
    assert metrics["members"][1]["config"]["seed"] == 2 and "test_tta_none" not in metrics["members"][0]
    for mode in nets.TTA_MODES:
        assert metrics[f"test_tta_{mode}"]["n"] == 7178
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    text = (tmp_path / "my_own_model_architecture.txt").read_text()
    assert "member_2: " in text and "trained by python scripts/train.py" in text

    # One model, raw pixels in, the mean of the members' probabilities out.
    x = fer2013.load_prepared(prepared_data)["x_val"][:64]
    members = [nets.predict_in_batches(nets.load_model(two_runs / f"{m}.pkl"), x, "none") for m in ("first", "second")]
    ensemble = nets.load_model(out)
    assert len(nets.ensemble_members(ensemble)) == 2
    assert np.allclose(nets.predict_in_batches(ensemble, x, "none"), np.mean(members, 0), atol=1e-5)

    # The temperature goes into each member's logits, before the average.
    folded = run_script("build/calibrate.py", "--model", out, "--data-dir", prepared_data, "--out", tmp_path)
    assert folded.returncode == 0, folded.stderr[-2000:]
    t = json.loads((tmp_path / "calibration.json").read_text())["temperature"]
    expected = calibration.with_temperature(member_logits(ensemble, x)[None], t)
    assert np.allclose(nets.predict_in_batches(nets.load_model(out), x, "none"), expected, atol=1e-4)

    # report.py rewrites an ensemble's reports: it has no history of its own.
    (tmp_path / "my_own_model_architecture.txt").unlink()
    again = run_script("build/report.py", "--model", out, "--no-evaluate")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "An ensemble: the mean of 2 networks" in (tmp_path / "my_own_model_architecture.txt").read_text()


@needs_shared
def test_ensemble_bad_input_gets_one_line(two_runs, tmp_path):
    shutil.copy(two_runs / "second.pkl", tmp_path / "orphan.pkl")  # no metrics beside it
    assert_clean_error(run_script("build/ensemble.py", two_runs / "first.pkl", tmp_path / "orphan.pkl",
                                  "--out", tmp_path / "e.pkl"), "no training record", "orphan_metrics.json")
    assert_clean_error(run_script("build/ensemble.py", two_runs / "first.pkl", two_runs / "second.pkl",
                                  "--out", two_runs / "first.pkl"), "is one of the members")
    one = run_script("build/ensemble.py", two_runs / "first.pkl")
    assert one.returncode == 2 and "two or more" in one.stderr


def test_tensorboard_screenshot_shows_the_committed_members_only(tmp_path):
    from measure import tensorboard_screenshot
    members = json.loads((tensorboard_screenshot.MODEL_DIR / "metrics.json").read_text())["members"]
    logdirs = tensorboard_screenshot.member_logdirs()
    assert sorted(logdirs) == sorted(Path(m["model"]).stem for m in members)
    assert all(d.is_dir() and d.name.endswith("_tensorboard") for d in logdirs.values())
    # One network trained into a folder: its logs are that folder's tensorboard/.
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps({"model": "my_own_model.pkl"}))
    assert tensorboard_screenshot.member_logdirs(tmp_path) == {"my_own_model": tmp_path / "tensorboard"}
    # A members' list whose logs are gone: one clean line, not a traceback.
    (tmp_path / "metrics.json").write_text(json.dumps({"model": "my_own_model.pkl",
                                                       "members": [{"model": "results/model/runs/nothing.pkl"}]}))
    with pytest.raises(UserError, match="no TensorBoard logs"):
        tensorboard_screenshot.member_logdirs(tmp_path)
