"""Hack the CNN: the attack works within its bound, the committed results hold, bad input is refused."""
import json

import cv2
import numpy as np
import pytest

import hack_the_cnn
from conftest import assert_clean_error, run_script, full
from expressions import EMOTIONS
from expressions import model as nets
from hack_the_cnn import HACK_DIR

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


def test_attack_reaches_a_chosen_target_in_every_mode_within_the_bound():
    model = nets.load_model()
    x0 = cv2.imread(str(HACK_DIR / "input_image.png"), cv2.IMREAD_GRAYSCALE)
    target = EMOTIONS.index("Angry")
    x1, ok = hack_the_cnn.attack(model, x0, target, eps=4, steps=150, min_probability=0.4, min_lead=0.1)
    assert ok
    assert np.abs(x1.astype(int) - x0.astype(int)).max() <= 4
    for mode in nets.TTA_MODES:
        p = nets.make_predictor(model, mode)(x1[None, ..., None]).numpy()[0]
        assert int(np.argmax(p)) == target and p[target] >= 0.4 and p[target] - np.sort(p)[-2] >= 0.1, (mode, p)


@pytest.mark.parametrize("folder", [HACK_DIR, HACK_DIR / "lfw_face_1"])
def test_committed_hack_reloads_as_happy_and_sad_in_every_mode(folder):
    report = json.loads((folder / "hack.json").read_text())
    x0 = cv2.imread(str(folder / "input_image.png"), cv2.IMREAD_UNCHANGED)
    x1 = cv2.imread(str(folder / "hacked_image.png"), cv2.IMREAD_UNCHANGED)
    assert x0.shape == x1.shape == (48, 48) and x0.dtype == np.uint8
    linf = np.abs(x1.astype(int) - x0.astype(int)).max()
    assert 0 < linf <= report["epsilon"] == report["linf"]
    if folder.name == "lfw_face_1":  # the survey's most confident Happy face fooled at 1 grey level
        assert report["epsilon"] == 1 and np.array_equal(x0, hack_the_cnn.survey_faces()[1])
    model = nets.load_model()
    for mode in nets.TTA_MODES:
        p = nets.make_predictor(model, mode)(np.stack([x0, x1])[..., None]).numpy()
        assert EMOTIONS[int(np.argmax(p[0]))] == "Happy"
        sad = p[1][EMOTIONS.index("Sad")]
        assert sad >= report["min_probability"] and sad - np.sort(p[1])[-2] >= report["min_lead"], (mode, p[1])
        assert np.allclose(p[1], list(report["probabilities_after"][mode].values()), atol=1e-4)


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
    # The target is the source class: refused before anything runs.
    result = run_script("hack_the_cnn.py", "--target", "Happy", "--out", tmp_path / "same")
    assert result.returncode == 2 and "--target must differ" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "same").exists()
    # An output folder that cannot be written: said before the attack, not after it.
    (tmp_path / "file").write_text("")
    for out in ("/proc/hack", tmp_path / "file"):
        result = run_script("hack_the_cnn.py", "--out", out)
        assert_clean_error(result, "cannot write")
        assert "attacking" not in result.stdout


def test_survey_attacks_every_face_read_as_happy(tmp_path):
    result = run_script("hack_the_cnn.py", "--survey", "--max-eps", "2", "--steps", "5", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "survey.json").read_text())
    assert (tmp_path / "survey.png").stat().st_size > 10_000
    faces = hack_the_cnn.survey_faces()
    assert faces.shape == (100, 48, 48) and faces.dtype == np.uint8
    p = nets.make_predictor(nets.load_model())(faces[..., None]).numpy()
    happy = EMOTIONS.index("Happy")
    assert [f["index"] for f in report["per_face"]] == list(np.flatnonzero(p.argmax(1) == happy))
    assert report["faces_read_as_source"] == len(report["per_face"]) > 10
    for face in report["per_face"]:
        assert abs(face["happy_probability"] - p[face["index"], happy]) < 1e-4
        if face["epsilon_needed"]:  # a face counted as fooled reached the bar in every mode
            assert min(face["sad_probability_after"].values()) >= report["min_probability"]
        else:
            assert face["sad_probability_after"] is None
    within = report["fooled_within"]
    assert within["1"] <= within["2"] == sum(bool(f["epsilon_needed"]) for f in report["per_face"])
    assert f"{within['2']} of {len(report['per_face'])} in all" in result.stdout
    refused = run_script("hack_the_cnn.py", "--survey", "--image", tmp_path / "survey.png", "--out", tmp_path)
    for args in (["--lfw-face", "100"], ["--lfw-face", "-1"]):
        out_of_range = run_script("hack_the_cnn.py", *args, "--out", tmp_path)
        assert out_of_range.returncode == 2 and "from 0 to 99" in out_of_range.stderr
    assert refused.returncode == 2 and "choose one of --image, --lfw-face and --survey" in refused.stderr
