"""Small fixes, each with a test that fails on the old behaviour: no folder beside the
repository, the command recorded from main's argv, the demo video's centring, imageN =
second N, project-relative help, reproducible detector help, the ensemble's learning curves."""
import importlib.util
import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SCRIPTS, run_script
from expressions import MODEL_DIR, UserError
from expressions import data as fer2013
from expressions import reports


def load_script(relative):
    """A script as a module, to call its main() in-process (by path: scripts/build is no package)."""
    path = SCRIPTS / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- 1. nothing beside the repository
def test_no_code_reads_a_folder_beside_the_repository():
    for path in SCRIPTS.rglob("*.py"):
        if path == SCRIPTS / "expressions" / "__init__.py" or ".egg-info" in str(path):
            continue
        text = path.read_text()
        assert "SHARED_DIR" not in text and "ROOT.parent" not in text, path


def test_no_data_in_the_data_folder_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="--source PATH"):
        fer2013.find_fer2013_source(tmp_path / "data")


def test_the_pretrained_model_needs_its_weights_named(tmp_path):
    result = run_script("train.py", "--backbone", "mobilenet", "--out", tmp_path)
    assert result.returncode == 2 and "--backbone mobilenet needs --weights" in result.stderr


# ---------------------------------------------------------------- 2. the command is main's argv
def write_tiny_data(folder):
    rng = np.random.default_rng(0)
    parts = {name: rng.integers(0, 256, (n, 48, 48), dtype=np.uint8) for name, n in
             (("x_train", 14), ("x_val", 14), ("x_test", 14))}
    labels = {f"y{name[1:]}": (np.arange(14) % 7).astype(np.int8) for name in parts}
    np.savez(folder / "fer2013_prepared.npz", **parts, **labels,
             usage_test=np.array(["PublicTest"] * 7 + ["PrivateTest"] * 7))


def test_build_scripts_record_the_argv_given_to_main(tmp_path):
    from expressions import model as nets
    write_tiny_data(tmp_path)
    record = {"command": "python scripts/train.py", "epochs_run": 1, "kept_epoch": 1, "val_accuracy": None,
              "trained_on_validation": True, "batch_norm_pass": None, "train_wall_minutes": 0.1,
              "config": {}, "machine": {"cpu": "test", "cores": 1}}
    for name in ("a", "b"):
        nets.save_model(nets.build_cnn(width=4), tmp_path / f"{name}.pkl")
        (tmp_path / f"{name}_metrics.json").write_text(json.dumps({**record, "model": f"{name}.pkl"}))
    out = tmp_path / "ensemble" / "my_own_model.pkl"
    out.parent.mkdir()
    argv = [str(tmp_path / "a.pkl"), str(tmp_path / "b.pkl"), "--out", str(out), "--data-dir", str(tmp_path),
            "--no-evaluate"]
    assert load_script("build/ensemble.py").main(argv) == 0
    command = json.loads((out.parent / "metrics.json").read_text())["command"]
    assert re.fullmatch(r"python scripts/\S*ensemble\.py " + re.escape(" ".join(argv)), command), command

    argv = ["--model", str(out), "--temperature", "1", "--dry-run", "--data-dir", str(tmp_path),
            "--out", str(tmp_path)]
    assert load_script("build/calibrate.py").main(argv) == 0
    command = json.loads((tmp_path / "calibration.json").read_text())["command"]
    assert re.fullmatch(r"python scripts/\S*calibrate\.py " + re.escape(" ".join(argv)), command), command

    argv = ["--model", str(out), "--kind", "float32", "--data-dir", str(tmp_path)]
    assert load_script("build/export_tflite.py").main(argv) == 0
    command = json.loads(out.with_suffix(".tflite.json").read_text())["command"]
    assert command == "python scripts/build/export_tflite.py " + " ".join(argv), command


# ---------------------------------------------------------------- 3, 4. the preprocessing test
def test_demo_video_centres_the_face_box_not_a_square_of_its_width(tmp_path, monkeypatch):
    import skimage.data

    import preprocess
    from expressions.faces import Face
    photo = np.zeros((512, 512, 3), np.uint8)
    photo[195:206, 215:226] = 255  # a white square at the centre of a tall face box
    monkeypatch.setattr(skimage.data, "astronaut", lambda: photo)

    class TallBox:
        def detect(self, image, still=False):
            return [Face(box=(200, 100, 40, 200), landmarks=None, score=1.0)]
    monkeypatch.setattr(preprocess, "FaceDetector", lambda *a, **k: TallBox())
    video = preprocess.make_demo_video(tmp_path / "demo.mp4", seconds=1, fps=2)
    ok, frame = cv2.VideoCapture(str(video)).read()
    ys, xs = np.nonzero(frame.max(axis=2) > 128)
    # At t = 0 the face centre is put at the middle of the 640x480 frame.
    assert abs(xs.mean() - 320) < 3 and abs(ys.mean() - 240) < 3, (xs.mean(), ys.mean())


def test_image_n_is_second_n_when_a_second_has_no_face(tmp_path, capsys):
    import preprocess
    from test_faces_video import astronaut_bgr, write_video
    face = cv2.resize(astronaut_bgr(), (320, 320))
    grey = np.full_like(face, 128)
    write_video(tmp_path / "gap.mp4", [face] * 5 + [grey] * 5 + [face] * 5, fps=5)  # seconds 0, 1 (no face), 2
    out = tmp_path / "out"
    out.mkdir()
    assert preprocess.crops_per_second(tmp_path / "gap.mp4", out) == 0
    assert sorted(p.name for p in out.glob("image*.png")) == ["image0.png", "image2.png"]
    assert "no face in second(s) 1" in capsys.readouterr().out


# ---------------------------------------------------------------- 5, 6. help texts
def test_compare_models_help_shows_no_machine_path():
    result = run_script("measure/compare_models.py", "--help")
    assert result.returncode == 0, result.stderr
    assert re.findall(r"(?<!\S)/\w\S*", result.stdout) == [], result.stdout  # no absolute path
    assert "results/model/runs/run3b.pkl" in result.stdout


def test_detector_help_states_no_rate_and_names_the_command_that_measures():
    import argparse

    from expressions.faces import add_detector_option
    parser = argparse.ArgumentParser()
    add_detector_option(parser)
    text = parser.format_help()
    assert "%" not in text
    command = re.search(r"scripts/\S+\.py", text).group(0)
    assert (ROOT / command).is_file()


# ---------------------------------------------------------------- 8. the ensemble's learning curves
def history(n, peak):
    epochs = np.arange(n)
    val = 0.6 - 0.001 * (epochs - peak) ** 2
    return pd.DataFrame({"epoch": epochs, "accuracy": 0.5 + 0.01 * epochs, "loss": 1.5 - 0.02 * epochs,
                         "val_accuracy": val, "val_loss": 1.2 - val / 10})


def test_ensemble_curves_are_the_members_held_out_twins(tmp_path):
    def run(name, seed, refit, kept):
        config = {"epochs": 8, "seed": seed, "out": str(tmp_path), "model_name": name,
                  **({"include_validation": True} if refit else {})}
        (tmp_path / f"{name}_metrics.json").write_text(json.dumps(
            {"model": f"{name}.pkl", "kept_epoch": kept, "trained_on_validation": refit, "config": config,
             "batch_norm_pass": None}))
        history(8, kept - 1).to_csv(tmp_path / f"{name}_history.csv", index=False)
    run("refit_seed1", 1, True, 8)
    run("twin_seed1", 1, False, 5)
    run("other_seed2", 2, False, 6)  # another recipe: not the twin
    # As ensemble.py records its members: each one's record, "model" its path.
    members = [{**json.loads((tmp_path / f"{name}_metrics.json").read_text()), "model": str(tmp_path / f"{name}.pkl")}
               for name in ("refit_seed1", "other_seed2")]
    runs = reports.members_learning_curves(members, tmp_path / "learning_curves.png")
    assert [(r["name"], r["kept_epoch"]) for r in runs] == [("twin_seed1", 5), ("other_seed2", 6)]
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000

    (tmp_path / "twin_seed1_metrics.json").unlink()  # a refit without a twin: said, no figure
    assert reports.members_learning_curves(members, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_committed_ensemble_members_twins_are_runs_3b_10_and_13():
    members = json.loads((MODEL_DIR / "metrics.json").read_text())["members"]
    twins = [reports.held_out_twin(reports.member_file(m), m)[0] for m in members]
    assert twins == ["run3b", "run10_seed2", "run13_crop44"]
