"""Hack the CNN: the attack works within its bound, the committed results hold, bad input is refused."""
import json

import cv2
import numpy as np

import expressions as ex
from conftest import assert_clean_error, run_script

import hack_the_cnn


def test_attack_reaches_a_chosen_target_within_the_bound():
    model = ex.load_model()
    x0 = cv2.imread(str(ex.HACK_DIR / "input_image.png"), cv2.IMREAD_GRAYSCALE)
    target = ex.EMOTIONS.index("Angry")
    x1, flipped = hack_the_cnn.attack(model, x0, target, eps=4, steps=150, tta=ex.DEFAULT_TTA)
    assert flipped
    assert np.abs(x1.astype(int) - x0.astype(int)).max() <= 4
    p = ex.make_predictor(model, *ex.TTA_MODES[ex.DEFAULT_TTA])(x1[None, ..., None]).numpy()[0]
    assert int(np.argmax(p)) == target


def test_committed_hack_reloads_as_happy_and_sad():
    report = json.loads((ex.HACK_DIR / "hack.json").read_text())
    x0 = cv2.imread(str(ex.HACK_DIR / "input_image.png"), cv2.IMREAD_UNCHANGED)
    x1 = cv2.imread(str(ex.HACK_DIR / "hacked_image.png"), cv2.IMREAD_UNCHANGED)
    assert x0.shape == x1.shape == (48, 48) and x0.dtype == np.uint8
    linf = np.abs(x1.astype(int) - x0.astype(int)).max()
    assert 0 < linf <= report["epsilon"] == report["linf"]
    p = ex.make_predictor(ex.load_model(), *ex.TTA_MODES[report["tta"]])(np.stack([x0, x1])[..., None]).numpy()
    assert ex.EMOTIONS[int(np.argmax(p[0]))] == "Happy"
    assert ex.EMOTIONS[int(np.argmax(p[1]))] == "Sad"


def test_bad_input(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    assert_clean_error(run_script("hack_the_cnn.py", "--image", bad, "--out", tmp_path), "cannot read image")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200), 90, np.uint8))
    assert_clean_error(run_script("hack_the_cnn.py", "--image", blank, "--out", tmp_path), "no face found")
    # A face the model does not read as the source class.
    result = run_script("hack_the_cnn.py", "--source-class", "Disgust", "--out", tmp_path)
    assert_clean_error(result, "not Disgust")
