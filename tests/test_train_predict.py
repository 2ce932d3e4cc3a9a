"""Training (a tiny run, resume after SIGKILL, reports, MirroredStrategy, bad input) and the
committed model's accuracy."""
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SCRIPTS, TINY, assert_clean_error, needs_shared, run_script, full
from expressions import MODEL_DIR, UserError
from expressions import data as fer2013
from expressions import model as nets

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


@needs_shared
def test_tiny_run_writes_a_loadable_model_that_learned(tiny_model, prepared_data):
    out, result = tiny_model
    model = nets.load_model(out / "my_own_model.pkl")
    history = pd.read_csv(out / "history.csv")
    assert list(history.epoch) == [0, 1, 2]
    assert history.loss.iloc[-1] < history.loss.iloc[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["kept_epoch"] == int(history.val_accuracy.idxmax()) + 1
    # The saved model is the one the metrics describe: its validation accuracy on the run's
    # slice is the recorded figure (after the batch-norm pass, if it was kept).
    data = fer2013.subset(fer2013.load_prepared(prepared_data), 384, seed=1)
    measured = np.mean(nets.predict_in_batches(model, data["x_val"], "none").argmax(1) == data["y_val"])
    assert measured == pytest.approx(metrics["val_accuracy"], abs=1.5 / len(data["y_val"]))
    # Test figures for every prediction mode, on all 7,178 images and per split.
    for mode in nets.TTA_MODES:
        figures = metrics[f"test_tta_{mode}"]
        assert figures["n"] == 7178 and 0 < figures["accuracy_PrivateTest"] < 1
    assert "test accuracy (test-time augmentation: flip+shift)" in result.stdout
    for report in ("learning_curves.png", "confusion_matrix.png"):
        assert (out / report).stat().st_size > 10_000
    assert "Why this architecture" in (out / "my_own_model_architecture.txt").read_text()
    assert (out / "tensorboard").is_dir()
    assert not (out / "my_own_model_run").exists()  # snapshots are dropped once the run is complete


@needs_shared
def test_report_script_rewrites_the_reports_of_a_finished_model(tiny_model, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_model[0], out)
    before = json.loads((out / "metrics.json").read_text())
    for report in ("learning_curves.png", "confusion_matrix.png", "my_own_model_architecture.txt"):
        (out / report).unlink()
    result = run_script("build/report.py", "--model", out / "my_own_model.pkl", "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    for report in ("learning_curves.png", "my_own_model_architecture.txt"):
        assert (out / report).stat().st_size > 1000
    assert "test accuracy, test-time augmentation flip+shift" in (out / "my_own_model_architecture.txt").read_text()
    assert json.loads((out / "metrics.json").read_text()) == before  # --no-evaluate keeps the test figures
    (out / "history.csv").unlink()
    assert_clean_error(run_script("build/report.py", "--model", out / "my_own_model.pkl", "--no-evaluate"), "history.csv")


@needs_shared
def test_killed_run_resumes_where_it_stopped(prepared_data, tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "--epochs", "4", "--data-dir", str(prepared_data),
           "--out", str(tmp_path), "--no-evaluate", "--no-batch-norm-pass"]
    run_dir = tmp_path / "my_own_model_run"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(run_dir.glob("epoch-0001")):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    snapshots = sorted(run_dir.glob("epoch-[0-9]*[0-9]"))
    assert len(snapshots) == 1  # one complete snapshot: the older one is removed when a new one lands
    done = int(snapshots[0].name.split("-")[1])
    assert 1 <= done < 4

    # A damaged snapshot is refused with a way out, not a traceback.
    state = snapshots[0] / "state.json"
    saved = state.read_bytes()
    state.write_text("{not json")
    assert_clean_error(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True), "damaged", "--fresh")
    state.write_bytes(saved)
    # Other options cannot silently continue this run.
    other = [c if c != "4" else "5" for c in cmd]
    assert_clean_error(subprocess.run(other, cwd=ROOT, capture_output=True, text=True), "other options", "--fresh")

    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming after epoch {done}" in result.stdout
    epochs_run_again = [int(e) for e in re.findall(r"^epoch +(\d+)", result.stdout, re.M)]
    assert epochs_run_again == list(range(done + 1, 5))  # continues after the last finished epoch
    assert list(pd.read_csv(tmp_path / "history.csv").epoch) == [0, 1, 2, 3]


@needs_shared
def test_mirrored_strategy_trains_a_loadable_model(prepared_data, tmp_path):
    result = run_script("train.py", *TINY, "--epochs", "1", "--strategy", "mirrored", "--data-dir", prepared_data,
                        "--out", tmp_path, "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    model = nets.load_model(tmp_path / "my_own_model.pkl")
    p = model(np.full((2, 48, 48, 1), 128, np.float32)).numpy()
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["strategy"] == "mirrored"


def test_random_crops_are_whole_pixel_crops_of_the_face():
    """With --crop-px 44 the network sees the central 44 pixels, and the warp (here with
    rotation, zoom and shift off) moves each face by -2..2 whole pixels: a random crop."""
    import tensorflow as tf
    from expressions import training
    x = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 1)).astype(np.float32)
    augment = training.make_augment(0.0, max_rotation_deg=0, max_shift=0, zoom=0, crop_px=44)
    seen = augment(tf.constant(x), None)[0].numpy()[:, 2:46, 2:46]
    offsets = set()
    for image, crop in zip(x, seen):
        found = [(dy, dx, mirrored) for mirrored in (False, True) for dy in range(5) for dx in range(5)
                 if np.allclose((image[:, ::-1] if mirrored else image)[dy:dy + 44, dx:dx + 44], crop, atol=1e-3)]
        assert len(found) == 1
        offsets.add(found[0][:2])
    assert len(offsets) > 10  # of the 25 possible


@needs_shared
def test_network_on_random_crops_trains_and_takes_whole_faces(prepared_data, tmp_path):
    result = run_script("train.py", *TINY, "--epochs", "1", "--crop-px", "44", "--data-dir", prepared_data,
                        "--out", tmp_path, "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    model = nets.load_model(tmp_path / "my_own_model.pkl")  # still 48x48 in, 7 out
    assert model.get_layer("central_crop").output.shape[1:3] == (44, 44)
    assert model.count_params() < nets.build_cnn(8).count_params()  # a 2x2 map left to flatten, not 3x3
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["crop_px"] == 44
    for bad in ("45", "30", "50"):
        refused = run_script("train.py", "--crop-px", bad, "--out", tmp_path / "bad")
        assert refused.returncode == 2 and "--crop-px must be even" in refused.stderr
    refused = run_script("train.py", "--backbone", "mobilenet", "--crop-px", "44", "--out", tmp_path / "bad")
    assert refused.returncode == 2 and "an option of our own CNN" in refused.stderr


@needs_shared
def test_refit_on_the_validation_rows_keeps_the_last_epoch(prepared_data, tmp_path):
    result = run_script("train.py", *TINY, "--epochs", "2", "--include-validation", "--data-dir", prepared_data,
                        "--out", tmp_path, "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "480 train / 96 validation images" in result.stdout  # 384 + 96: validation joins training
    assert "validation rows trained on" in result.stdout and "batch-norm pass" not in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["trained_on_validation"] and metrics["kept_epoch"] == 2 and metrics["val_accuracy"] is None
    assert metrics["config"]["include_validation"] is True
    assert "the last: the validation rows were trained on" in (tmp_path / "my_own_model_architecture.txt").read_text()
    # The saved model is the last epoch's: on the (seen) validation rows it scores what that epoch logged.
    data = fer2013.subset(fer2013.load_prepared(prepared_data), 384, seed=1)
    model = nets.load_model(tmp_path / "my_own_model.pkl")
    measured = np.mean(nets.predict_in_batches(model, data["x_val"], "none").argmax(1) == data["y_val"])
    logged = pd.read_csv(tmp_path / "history.csv").val_accuracy.iloc[-1]
    assert measured == pytest.approx(logged, abs=1.5 / len(data["y_val"]))
    # An ensemble with such a member quotes no validation figure: those rows were trained on.
    shutil.copy(tmp_path / "metrics.json", tmp_path / "twin_metrics.json")
    shutil.copy(tmp_path / "my_own_model.pkl", tmp_path / "twin.pkl")
    made = run_script("build/ensemble.py", tmp_path / "my_own_model.pkl", tmp_path / "twin.pkl", "--out",
                      tmp_path / "ens.pkl", "--data-dir", prepared_data, "--no-evaluate")
    assert made.returncode == 0 and "validation accuracy: not measured" in made.stdout, made.stderr[-2000:]
    ensemble = json.loads((tmp_path / "ens_metrics.json").read_text())
    assert ensemble["trained_on_validation"] and ensemble["val_accuracy"] is None
    # ... and every script that would measure it on those rows refuses it in one line.
    data_dir = ("--data-dir", prepared_data)
    for script, *options in (("measure/compare_models.py", tmp_path / "ens.pkl", *data_dir),
                             ("predict.py", "--model", tmp_path / "ens.pkl", "--split", "val", *data_dir),
                             ("build/calibrate.py", "--model", tmp_path / "ens.pkl", "--dry-run", "--out", tmp_path, *data_dir),
                             ("measure/measure_crop.py", "--model", tmp_path / "ens.pkl")):
        assert_clean_error(run_script(script, *options), "trained on the validation rows")
    # The test images are fair for it: compare_models.py reports there after a decision.
    on_test = run_script("measure/compare_models.py", tmp_path / "ens.pkl", "--baseline", tmp_path / "twin.pkl",
                         "--split", "test", "--tta", "none", *data_dir)
    assert on_test.returncode == 0 and "test, FER2013 labels" in on_test.stdout, on_test.stderr[-2000:]
    # A given temperature needs no fit there: calibrate.py applies it.
    given = run_script("build/calibrate.py", "--model", tmp_path / "ens.pkl", "--temperature", "0.845", "--dry-run",
                       "--out", tmp_path, "--data-dir", prepared_data)
    assert given.returncode == 0 and "T = 0.845" in given.stdout, given.stderr[-2000:]


def test_recompute_batch_norm_takes_the_plain_mean_of_the_batches():
    import keras
    from expressions import training
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    data = np.random.default_rng(0).normal(5, 2, (1000, 3)).astype("float32")
    training.recompute_batch_norm(model, [data[i:i + 100] for i in range(0, 1000, 100)])
    bn = model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), data.var(0), rtol=0.02)
    assert bn.momentum == 0.99  # restored for the saved model


def test_train_without_prepared_data(tmp_path):
    assert_clean_error(run_script("train.py", "--data-dir", tmp_path, "--out", tmp_path / "m"), "preprocess.py")


@pytest.mark.parametrize("out", ["file/sub", "/proc/model"])
def test_train_into_unwritable_folder(tmp_path, out):
    (tmp_path / "file").write_text("")
    path = out if out.startswith("/") else tmp_path / out
    assert_clean_error(run_script("train.py", "--out", path), "cannot write")


def test_predict_with_missing_or_corrupt_model(tmp_path):
    # A one-row test file of its own, so that only the model can be what is wrong.
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("emotion,pixels,Usage\n3," + " ".join(["128"] * 48 * 48) + ",PublicTest\n")
    assert len(fer2013.load_test_csv(test_csv)[0]) == 1
    assert_clean_error(run_script("predict.py", "--model", tmp_path / "none.pkl", "--test-csv", test_csv),
                       "model not found")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    assert_clean_error(run_script("predict.py", "--model", bad, "--test-csv", test_csv), "cannot load model")


def test_model_of_the_wrong_shape_is_refused(tmp_path):
    import keras
    wrong = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    with open(tmp_path / "wrong.pkl", "wb") as f:
        pickle.dump(wrong, f)
    with pytest.raises(UserError, match="expected"):
        nets.load_model(tmp_path / "wrong.pkl")


def test_predict_without_test_data(tmp_path):
    assert_clean_error(run_script("predict.py", "--test-csv", tmp_path / "test.csv"), "preprocess.py")


def test_bad_test_row_does_not_suggest_an_option_predict_lacks(tmp_path):
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("emotion,pixels,Usage\n3," + " ".join(["128"] * 2303) + ",PublicTest\n")
    result = run_script("predict.py", "--test-csv", test_csv)
    assert_clean_error(result, "line 2", "2303 pixel values")
    assert "--skip-bad-rows" not in result.stderr


@needs_shared
def test_committed_model_accuracy_on_the_7178_test_images(prepared_data, tmp_path):
    # Three networks x 10 views x 7,178 faces: minutes alone, but more than the default 10 on
    # 2 cores shared with a training run (seen: a timeout at 600 s beside one).
    result = run_script("predict.py", "--test-csv", prepared_data / "test.csv", "--json", tmp_path / "figures.json",
                        timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.fullmatch(r"Accuracy on test set: (\d+)%", result.stdout.splitlines()[0])
    assert match, result.stdout
    assert int(match.group(1)) >= MIN_TEST_ACCURACY
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["n"] == 7178 and figures["tta"] == nets.DEFAULT_TTA
    # The committed metrics were measured with the committed model (to within 2 of 7,178
    # images: another CPU may round a near-tie the other way).
    committed = json.loads((MODEL_DIR / "metrics.json").read_text())[f"test_tta_{nets.DEFAULT_TTA}"]
    for key in ("accuracy", "accuracy_PublicTest", "accuracy_PrivateTest"):
        assert figures[key] == pytest.approx(committed[key], abs=0.0006), key


# The brief asks for more than 70 %. The committed model measures 72.01 % (see the README),
# 5,169 of 7,178 images, one image above 72 %: a near-tie rounded the other way on another
# CPU would print 71, so the floor stays there.
MIN_TEST_ACCURACY = 71
