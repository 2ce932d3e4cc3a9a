"""Training (smoke run, resume after SIGKILL, bad input) and the committed model's accuracy."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import expressions as ex
from conftest import ROOT, SCRIPTS, assert_clean_error, needs_shared, run_script

TINY = ["--subset", "384", "--batch-size", "64", "--width", "8", "--erase-prob", "0", "--lr", "0.05"]


@needs_shared
def test_smoke_training_writes_a_loadable_model_and_learns(prepared_data, tmp_path):
    result = run_script("train.py", *TINY, "--epochs", "3", "--swa-epochs", "1", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    model = ex.load_model(tmp_path / "my_own_model.pkl")
    assert model.output_shape == (None, 7)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.epoch) == [0, 1, 2]
    assert history.loss.iloc[-1] < history.loss.iloc[0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_tta_flip+shift"]["n"] == 7178 and "accuracy_PrivateTest" in metrics["test_tta_none"]
    # The last epoch's weights were averaged (on their own) and measured on validation.
    swa = metrics["swa"]
    assert swa["first_epoch"] == swa["last_epoch"] == 3 and swa["count"] == 1
    assert 0 <= swa["val_accuracy"] <= 1 and swa["kept"] == (swa["val_accuracy"] > swa["best_epoch_val_accuracy"])
    for artifact in ("learning_curves.png", "confusion_matrix.png"):
        assert (tmp_path / artifact).stat().st_size > 10_000
    assert not (tmp_path / "my_own_model_run").exists()  # checkpoints are dropped once the run is complete


@needs_shared
def test_batch_norm_pass_on_a_finished_model(prepared_data, tmp_path):
    result = run_script("train.py", *TINY, "--epochs", "2", "--no-batch-norm-pass", "--no-evaluate", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["batch_norm_pass"] is None
    trained = (tmp_path / "my_own_model.pkl").read_bytes()
    result = run_script("train.py", *TINY, "--batch-norm-pass-only", "--no-evaluate", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    bn = metrics["batch_norm_pass"]
    assert bn["kept"] == (bn["val_accuracy_recomputed"] > bn["val_accuracy_moving_averages"])
    # (the run's figure and the pass's re-measurement of the same weights may differ by a near-tie: one image of 96)
    kept_val = bn["val_accuracy_recomputed"] if bn["kept"] else bn["val_accuracy_moving_averages"]
    assert metrics["val_accuracy"] == pytest.approx(kept_val, abs=0.011)
    assert ((tmp_path / "my_own_model.pkl").read_bytes() != trained) == bn["kept"]
    assert "batch-norm pass" in (tmp_path / "my_own_model_architecture.txt").read_text()
    assert_clean_error(run_script("train.py", "--batch-norm-pass-only", "--out", tmp_path), "already")


@needs_shared
def test_killed_run_resumes_where_it_stopped(prepared_data, tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "--epochs", "4", "--swa-epochs", "2", "--out", str(tmp_path),
           "--no-evaluate"]
    done_file = tmp_path / "my_own_model_run" / "epochs_done.txt"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if done_file.exists():  # one epoch checkpointed
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = int(done_file.read_text())
    assert 1 <= done < 4
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    epochs_run_again = re.findall(r"^epoch +(\d+)", result.stdout, re.M)
    assert int(epochs_run_again[0]) == done + 1  # continues after the last finished epoch
    assert list(pd.read_csv(tmp_path / "history.csv").epoch) == [0, 1, 2, 3]
    swa = json.loads((tmp_path / "metrics.json").read_text())["swa"]
    assert (swa["first_epoch"], swa["last_epoch"], swa["count"]) == (3, 4, 2)  # each averaged epoch once


def test_recompute_batch_norm_takes_the_plain_mean_of_the_batches():
    import keras
    import numpy as np
    import train
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    data = np.random.default_rng(0).normal(5, 2, (1000, 3)).astype("float32")
    train.recompute_batch_norm(model, [data[i:i + 100] for i in range(0, 1000, 100)])
    bn = model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), data.var(0), rtol=0.02)
    assert bn.momentum == 0.99  # restored for the saved model


def test_mixup_blends_images_and_labels_alike():
    import numpy as np
    import train
    # Image k is flat grey 30 * k with label k: a blend's pixels must equal its label's mean grey.
    x = np.repeat(30.0 * np.arange(7), 48 * 48).reshape(7, 48, 48, 1).astype("float32")
    y = np.eye(7, dtype="float32")
    mixed_x, mixed_y = (t.numpy() for t in train.make_mixup(0.4)(x, y))
    np.testing.assert_allclose(mixed_y.sum(1), 1, rtol=1e-5)
    assert (mixed_y >= 0).all() and (mixed_y.max(1) < 0.999).any()  # some images were blended
    np.testing.assert_allclose(mixed_x[:, 20, 20, 0], mixed_y @ (30.0 * np.arange(7)), rtol=1e-4)
    assert np.ptp(mixed_x, axis=(1, 2, 3)).max() < 1e-3  # each blend of flat images is flat


def test_train_without_prepared_data(tmp_path):
    assert_clean_error(run_script("train.py", "--data-dir", tmp_path, "--out", tmp_path / "m"), "preprocess.py")


def test_train_into_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_clean_error(run_script("train.py", "--out", blocker / "sub"), "cannot write to output folder")


def test_predict_with_missing_or_corrupt_model(tmp_path):
    # A one-row test file of its own: the test must not depend on data/ prepared by another test.
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("emotion,pixels,Usage\n3," + " ".join(["128"] * 48 * 48) + ",PublicTest\n")
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
    assert_clean_error(run_script("predict.py", "--model", tmp_path / "wrong.pkl", "--test-csv", tmp_path / "x.csv"))
    with pytest.raises(ex.UserError, match="expected"):
        ex.load_model(tmp_path / "wrong.pkl")


def test_predict_without_test_data(tmp_path):
    assert_clean_error(run_script("predict.py", "--test-csv", tmp_path / "test.csv"), "preprocess.py")


@needs_shared
def test_committed_model_accuracy_on_the_7178_test_images(prepared_data):
    result = run_script("predict.py", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    match = re.fullmatch(r"Accuracy on test set: (\d+)%", first)
    assert match, first
    assert int(match.group(1)) >= MIN_TEST_ACCURACY
    assert "on 7,178 images" in result.stdout and "PrivateTest" in result.stdout
    # The committed metrics were measured with the committed model.
    metrics = json.loads((ex.MODEL_DIR / "metrics.json").read_text())
    assert int(metrics[f"test_tta_{ex.DEFAULT_TTA}"]["accuracy"] * 100) == int(match.group(1))


# The brief asks for more than 70 %; the committed model measures 70.4 % (see the README).
MIN_TEST_ACCURACY = 70
