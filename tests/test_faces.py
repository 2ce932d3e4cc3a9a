"""Finding faces: the shipped YuNet file, every form of photo, alignment, ids, folders and --csv."""
import shutil
from pathlib import Path
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, run_script, full
from expressions import UserError, crops, faces
from test_faces_video import LINE, astronaut_bgr, check_stream_output, grace_hopper_bgr, write_video


def eye_tilt(face):
    (x0, y0), (x1, y1) = face.landmarks[0], face.landmarks[1]
    return abs(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def test_detector_file_missing_or_altered_is_one_clear_error(tmp_path, monkeypatch):
    faces.check_yunet_file()  # the committed file is intact
    data = bytearray(faces.YUNET_PATH.read_bytes())
    monkeypatch.setattr(faces, "YUNET_PATH", tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="missing"):
        faces.FaceDetector("yunet")
    altered = tmp_path / "altered.onnx"
    data[1000] ^= 1  # one bit, same size
    altered.write_bytes(bytes(data))
    monkeypatch.setattr(faces, "YUNET_PATH", altered)
    with pytest.raises(UserError, match="altered"):
        faces.FaceDetector("yunet")


def test_alignment_levels_a_rotated_face():
    # The geometry, with the landmarks where they truly are (the upright photo's, turned
    # with it): YuNet's own landmarks on a turned face lean towards upright by a few degrees.
    photo = faces.to_gray(astronaut_bgr())
    h, w = photo.shape[:2]
    detector = faces.FaceDetector()
    upright = detector.detect(photo, still=True)[0]
    assert eye_tilt(upright) < 2
    reference = crops.crop_aligned(photo, upright.landmarks)
    for angle in (-25, 25):
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rotated = cv2.warpAffine(photo, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
        landmarks = upright.landmarks @ turn[:, :2].T + turn[:, 2]
        aligned = crops.crop_aligned(rotated, landmarks)
        difference = np.abs(aligned.astype(int) - reference).mean()
        assert difference < 6  # the same crop as the upright face's
        # Where the landmarks land in the crop: eyes level, framed as FER2013's faces (the
        # measured eye height, centre line and eye-to-mouth distance).
        m = crops.aligned_transform(landmarks, 48)
        p = landmarks @ m[:, :2].T + m[:, 2]
        assert abs(p[1, 1] - p[0, 1]) < 0.01 and p[1, 0] > p[0, 0]
        eyes, mouth = (p[0] + p[1]) / 2 / 48, (p[3] + p[4]) / 2 / 48
        assert eyes == pytest.approx([crops.CENTRE_X, crops.EYE_Y], abs=1e-6)
        assert np.linalg.norm(mouth - eyes) == pytest.approx(crops.EYE_MOUTH, abs=1e-6)
        box = crops.crop_box(rotated, detector.detect(rotated, still=True)[0].box)
        assert np.abs(box.astype(int) - reference).mean() > 3 * difference  # a box crop keeps the tilt


def test_faces_of_any_size_and_photos_of_any_form(tmp_path):
    detector = faces.FaceDetector()
    photo = astronaut_bgr()
    x, y, w, h = detector.detect(photo, still=True)[0].box
    face_only = photo[max(0, y - h // 3):y + h + h // 3, max(0, x - w // 3):x + w + w // 3]
    cases = {
        "thumbnail": cv2.resize(face_only, (60, 80), interpolation=cv2.INTER_AREA),
        "face filling a 4000 px photo": cv2.resize(face_only, (4000, 3000)),
        "small face in a 4000 px photo": cv2.copyMakeBorder(photo, 1250, 1250, 1750, 1750, cv2.BORDER_CONSTANT),
    }
    for name, image in cases.items():
        assert len(detector.detect(image, still=True)) == 1, name
    # Forms a photo comes in: each read as 8-bit BGR, each gives the face.
    forms = {"grey.png": cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), "16bit.png": photo.astype(np.uint16) * 257,
             "rgba.png": cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)}
    for name, image in forms.items():
        cv2.imwrite(str(tmp_path / name), image)
    from PIL import Image
    Image.fromarray(photo[..., ::-1]).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette.png")
    for name in [*forms, "palette.png"]:
        image = faces.read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.ndim == 3, name
        assert len(detector.detect(image, still=True)) == 1, name
    assert detector.detect(np.zeros((1, 1, 3), np.uint8), still=True) == []


def test_huge_tiny_and_crowded_photos_through_predict(tmp_path):
    photo = astronaut_bgr()
    cv2.imwrite(str(tmp_path / "huge.jpg"), cv2.resize(photo, (10000, 10000), interpolation=cv2.INTER_NEAREST))
    cv2.imwrite(str(tmp_path / "tiny.png"), photo[:1, :1])
    cell = cv2.resize(photo, (300, 300))
    cv2.imwrite(str(tmp_path / "grid.png"), np.vstack([np.hstack([cell] * 3)] * 3))
    started = time.time()
    result = run_script("predict.py", tmp_path / "huge.jpg", tmp_path / "grid.png", tmp_path / "tiny.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.time() - started < 60  # a 10000x10000 photo takes seconds, not minutes
    assert "Traceback" not in result.stderr and "tiny.png: no face found" in result.stderr
    assert len([line for line in result.stdout.splitlines() if "grid.png: face" in line]) == 9
    assert len([line for line in result.stdout.splitlines() if "huge.jpg: face" in line]) == 1


def test_folders_and_csv(tmp_path):
    (tmp_path / "album" / "2024").mkdir(parents=True)
    left, right = cv2.resize(astronaut_bgr(), (400, 400)), cv2.resize(grace_hopper_bgr(), (400, 470))[35:435]
    cv2.imwrite(str(tmp_path / "album" / "two.png"), np.hstack([left, right]))
    cv2.imwrite(str(tmp_path / "album" / "2024" / "one.jpg"), left)
    cv2.imwrite(str(tmp_path / "album" / "2024" / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    (tmp_path / "album" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "album" / "notes.txt").write_text("not a photo")
    result = run_script("predict.py", tmp_path / "album", "--csv", tmp_path / "faces.csv")
    assert result.returncode == 1  # one file could not be read
    assert "Traceback" not in result.stderr and "broken.jpg" in result.stderr and "notes.txt" not in result.stderr
    table = pd.read_csv(tmp_path / "faces.csv")
    per_file = table.groupby(table.file.map(lambda f: f.split("/")[-1])).face.apply(sorted).to_dict()
    assert per_file == {"blank.png": [0], "one.jpg": [1], "two.png": [1, 2]}
    faces_only = table[table.face > 0]
    assert np.allclose(faces_only[["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]].sum(axis=1), 1,
                       atol=1e-3)
    assert faces_only[["right_eye_x", "mouth_left_y", "valence", "arousal"]].notna().all().all()
    assert set(faces_only.emotion) <= {"Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"}


def test_two_faces_keep_their_ids_in_the_stream(tmp_path):
    left, right = cv2.resize(astronaut_bgr(), (240, 240)), cv2.resize(grace_hopper_bgr(), (240, 280))[20:260]
    frames = []
    for i in range(30):  # both faces drift slowly to the right
        canvas = np.full((300, 640, 3), 60, np.uint8)
        dx = i * 2
        canvas[30:270, 20 + dx:260 + dx] = left
        canvas[30:270, 340 + dx:580 + dx] = right
        frames.append(canvas)
    clip = write_video(tmp_path / "two.mp4", frames, fps=10)
    result = run_script("predict_live_stream.py", "--source", clip)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = check_stream_output(result.stdout)
    assert len(lines) == 6 and all(LINE.fullmatch(line) for line in lines)
    assert sorted(line[-8:] for line in lines) == ["(face 1)"] * 3 + ["(face 2)"] * 3


def test_a_stream_searches_every_nth_frame_and_reuses_its_faces_between(monkeypatch):
    from expressions.pipeline import EmotionReader
    reader = EmotionReader(lambda crops: np.full((len(crops), 7), 1 / 7), detect_every=3)
    searched = []
    real_detect = reader.detector.detect
    monkeypatch.setattr(reader.detector, "detect", lambda image, still=False: searched.append(image.shape) or
                        real_detect(image, still))
    frame = astronaut_bgr()
    boxes = [reader(np.roll(frame, 3 * i, axis=1))[0][0].box for i in range(7)]
    assert len(searched) == 3  # frames 0, 3 and 6
    assert boxes[0] == boxes[1] == boxes[2] != boxes[3] == boxes[4] == boxes[5] != boxes[6]
    reader(cv2.resize(frame, (256, 256)))  # a frame of another size is always searched
    assert len(searched) == 4
    reader(frame, still=True)  # and so is a photo
    assert len(searched) == 5
    with pytest.raises(UserError, match="1 or more"):
        EmotionReader(lambda crops: crops, detect_every=0)


@full
@pytest.mark.skipif(not (SHARED / "media" / "liveportrait_d6.mp4").exists(), reason="../shared/media is not here")
def test_five_faces_at_once_keep_five_ids(tmp_path):
    from measure.benchmarking.videos import CROWD, make_crowd_video
    clip = make_crowd_video(SHARED / "media", tmp_path / "five.mp4")
    result = run_script("predict_live_stream.py", "--source", clip, "--max-seconds", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = check_stream_output(result.stdout)
    assert len(CROWD) == 5 and len(lines) == 15
    assert sorted(line[-8:] for line in lines) == [f"(face {i})" for i in range(1, 6) for _ in range(3)]


def test_frames_are_classified_by_the_tflite_form_only_when_it_was_made_from_the_model(tmp_path):
    from expressions import model as nets
    predict, runtime = nets.frame_predictor("own", "flip")
    assert runtime.name.startswith("tflite")  # the committed .tflite was made from the committed .pkl
    keras_predict, _ = nets.frame_predictor("own", "flip", runtime="keras")
    faces_48 = np.stack([cv2.resize(faces.to_gray(astronaut_bgr())[20:220, 150:350], (48, 48))])[..., None]
    assert np.abs(predict(faces_48) - keras_predict(faces_48)).max() < 0.05  # int8: close, not equal
    # A copy of the model without its own .tflite beside it: Keras, and a clear error if tflite is demanded.
    shutil.copy(nets.MODEL_PATH, tmp_path / "m.pkl")
    assert nets.frame_predictor(tmp_path / "m.pkl", "none")[1].name == "keras"
    with pytest.raises(UserError, match="export_tflite"):
        nets.frame_predictor(tmp_path / "m.pkl", "none", runtime="tflite")
    # A .tflite beside it that was made from another model is not used.
    shutil.copy(nets.tflite_path("own"), tmp_path / "m.tflite")
    shutil.copy(nets.tflite_path("own").with_suffix(".tflite.json"), tmp_path / "m.tflite.json")
    (tmp_path / "m.pkl").write_bytes((tmp_path / "m.pkl").read_bytes() + b"\0")
    with pytest.raises(UserError, match="not made from"):
        nets.frame_predictor(tmp_path / "m.pkl", "none", runtime="tflite")


def test_an_unreadable_photo_is_reported_with_its_cause():
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as folder:  # in /tmp: a folder any user may enter
        Path(folder).chmod(0o711)
        photo = Path(folder) / "locked.jpg"
        cv2.imwrite(str(photo), astronaut_bgr())
        photo.chmod(0o000)
        locked_folder = Path(folder) / "locked"
        locked_folder.mkdir()
        cv2.imwrite(str(locked_folder / "inside.jpg"), astronaut_bgr())
        locked_folder.chmod(0o000)
        as_nobody = os.geteuid() == 0  # root reads any file: read as an unprivileged user would
        messages = []
        try:
            if as_nobody:
                os.seteuid(65534)
            for path in (photo, locked_folder / "inside.jpg"):
                with pytest.raises(UserError) as err:
                    faces.read_image(path)
                messages.append(str(err.value))
        finally:
            if as_nobody:
                os.seteuid(0)
            locked_folder.chmod(0o700)  # so that it can be removed
    assert all("Permission denied" in m and "OpenCV" not in m for m in messages), messages
