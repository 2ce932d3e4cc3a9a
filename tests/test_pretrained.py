"""The optional pre-trained model: ImageNet MobileNet weights (a local file), fine-tuned by train.py."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_MOBILENET as MOBILENET, assert_clean_error, needs_shared, run_script, full
from expressions import MODEL_DIR
from expressions import model as nets

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image

needs_weights = pytest.mark.skipif(not MOBILENET.exists(), reason=f"no ImageNet MobileNet weights at {MOBILENET}")

# A small slice, faces kept at 48 px (MobileNet accepts it) so the run takes seconds.
TINY = ["--backbone", "mobilenet", "--subset", "256", "--batch-size", "64", "--input-px", "48",
        "--erase-prob", "0"]


@needs_weights
def test_backbone_starts_from_the_imagenet_weights():
    import h5py
    model = nets.build_mobilenet(str(MOBILENET), input_px=48)
    kernel = model.get_layer("backbone").get_layer("conv1").get_weights()[0]
    with h5py.File(MOBILENET, "r") as f:
        stored = f["conv1"]["conv1"]["kernel:0"][()]
    np.testing.assert_array_equal(kernel, stored)
    # Same contract as our own model: raw 48x48x1 pixels in, 7 probabilities out.
    p = model(np.full((2, 48, 48, 1), 128, np.float32)).numpy()
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-4)


@needs_shared
@needs_weights
def test_freeze_then_unfreeze_run_writes_the_pretrained_model(prepared_data, tmp_path):
    # At 96 px, as the real model: at 48 px the switch to batch statistics at unfreezing
    # throws a slice this small off for longer than the run lasts.
    result = run_script("train.py", *TINY, "--weights", MOBILENET, "--input-px", "96", "--subset", "384",
                        "--epochs", "3", "--freeze-epochs", "1", "--data-dir", prepared_data, "--out", tmp_path,
                        "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 with the backbone frozen" in result.stdout
    model = nets.load_model(tmp_path / "pre_trained_model.pkl")
    assert model.name == "fer_mobilenet" and model.get_layer("backbone").trainable
    history = pd.read_csv(tmp_path / "pre_trained_model_history.csv")
    assert list(history.epoch) == [0, 1, 2]
    assert history.loss.iloc[-1] < history.loss.iloc[0]
    metrics = json.loads((tmp_path / "pre_trained_model_metrics.json").read_text())
    assert metrics["config"]["backbone"] == "mobilenet" and metrics["config"]["freeze_epochs"] == 1
    assert "MobileNet" in (tmp_path / "pre_trained_model_architecture.txt").read_text()
    assert (tmp_path / "pre_trained_model_learning_curves.png").exists()
    assert not (tmp_path / "learning_curves.png").exists()  # our own model's reports are left alone
    # predict.py evaluates it like our own model.
    result = run_script("predict.py", "--model", tmp_path / "pre_trained_model.pkl", "--split", "val", "--tta", "none",
                        "--data-dir", prepared_data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Accuracy on validation set: ")


def test_missing_weights_file(tmp_path):
    result = run_script("train.py", *TINY, "--weights", tmp_path / "none.h5", "--out", tmp_path)
    assert_clean_error(result, "MobileNet weights not found")


def test_weights_file_that_is_not_mobilenet(prepared_data, tmp_path):
    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(b"not an HDF5 file")
    assert_clean_error(run_script("train.py", *TINY, "--weights", wrong, "--data-dir", prepared_data, "--out", tmp_path),
                       "cannot load MobileNet")


def test_weights_option_needs_the_mobilenet_backbone(tmp_path):
    result = run_script("train.py", "--weights", "imagenet", "--out", tmp_path)
    assert result.returncode == 2 and "--weights needs --backbone mobilenet" in result.stderr


@needs_shared
def test_committed_pretrained_model_prints_its_test_accuracy(prepared_data, tmp_path):
    # Single pass (a tenth of the default's work); the committed figures hold every mode.
    result = run_script("predict.py", "--model", "pre_trained", "--tta", "none", "--test-csv",
                        prepared_data / "test.csv", "--json", tmp_path / "figures.json")
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    match = re.fullmatch(r"Accuracy on test set: (\d+)%", first)
    assert match, first
    assert int(match.group(1)) >= 50  # far above the 25 % of always answering Happy
    # The committed metrics were measured with the committed model.
    figures = json.loads((tmp_path / "figures.json").read_text())
    committed = json.loads((MODEL_DIR / "pre_trained_model_metrics.json").read_text())["test_tta_none"]
    assert figures["accuracy"] == pytest.approx(committed["accuracy"], abs=0.0006)
