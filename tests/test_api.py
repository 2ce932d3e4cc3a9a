"""The Python API: EmotionRecognizer reads photos (paths, bytes, arrays) and streams as the
scripts do, shares one instance between threads, and raises UserError with the scripts'
one-line messages for every hostile input."""
import csv
import io
import os
import pickle
import re
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from conftest import ROOT, SHARED, needs_shared, run_script, full
from expressions import EMOTIONS, EmotionRecognizer, Face, ImageTooLarge, UserError
from expressions import model as nets
from expressions.hostile import png_bomb
from test_faces_video import astronaut_bgr, write_video

PHOTOS = SHARED / "media" / "photos"
VIDEO = SHARED / "media" / "fer_woman2.mp4"


@pytest.fixture(scope="module")
def recognizer():
    return EmotionRecognizer()


def test_a_photo_as_a_path_bytes_or_an_array_gives_the_same_faces(recognizer, tmp_path):
    image = np.hstack([astronaut_bgr(), astronaut_bgr()[:, ::-1]])
    path = tmp_path / "pair.png"
    cv2.imwrite(str(path), image)
    from_path = recognizer.analyze(path)
    assert len(from_path) == 2 and all(isinstance(f, Face) for f in from_path)
    assert recognizer.analyze(str(path)) == from_path
    assert recognizer.analyze(path.read_bytes()) == from_path
    assert recognizer.analyze(image) == from_path
    grey = sorted(f.box for f in recognizer.analyze(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)))
    assert len(grey) == 2 and np.abs(np.subtract(grey, sorted(f.box for f in from_path))).max() <= 8
    face = from_path[0]
    assert face.emotion == max(face.probabilities, key=face.probabilities.get) and list(face.probabilities) == EMOTIONS
    assert face.probability == face.probabilities[face.emotion] and abs(sum(face.probabilities.values()) - 1) < 1e-3
    assert face.box[2] * face.box[3] >= from_path[1].box[2] * from_path[1].box[3]  # largest first
    assert set(face.to_dict()) == {"box", "emotion", "probability", "probabilities", "valence", "arousal", "landmarks"}
    assert recognizer.analyze(np.full((240, 320, 3), 128, np.uint8)) == []


@full
@needs_shared
def test_analyze_gives_what_predict_py_prints_and_writes(recognizer, tmp_path):
    photos = sorted(PHOTOS.glob("*.jpg"))[:3]
    result = run_script("predict.py", *photos, "--csv", tmp_path / "faces.csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "faces.csv").read_text())))
    api_rows = [(str(p), n, f) for p in photos for n, f in enumerate(recognizer.analyze(p), start=1)]
    assert len(rows) == len(api_rows)
    for row, (path, n, face) in zip(rows, api_rows):
        assert (row["file"], int(row["face"])) == (path, n)
        assert [int(row[k]) for k in "xywh"] == list(face.box) and row["emotion"] == face.emotion
        assert all(float(row[e.lower()]) == pytest.approx(face.probabilities[e], abs=6e-5) for e in EMOTIONS)
        assert f"{path}: face {n} at x={face.box[0]} y={face.box[1]}" in result.stdout
        assert f"{face.emotion} , {int(round(face.probability * 100))}%" in result.stdout


@full
@needs_shared
def test_stream_gives_the_seconds_predict_live_stream_writes(tmp_path):
    result = run_script("predict_live_stream.py", "--source", VIDEO, "--max-seconds", 3, "--csv", tmp_path / "t.csv")
    assert result.returncode == 0, result.stderr
    written = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    frames = list(EmotionRecognizer("fast", tta=nets.ALTERNATE).stream(str(VIDEO), max_seconds=3))  # its defaults
    assert [f.index for f in frames] == list(range(len(frames))) and len(frames) == 90  # 30 FPS
    seconds = [s for f in frames for s in f.seconds]
    assert [s.time for s in seconds] == ["00:00:00", "00:00:01", "00:00:02"]
    assert frames[-1].seconds == [seconds[-1]]  # the last frame carries the last second
    rows = [(s.time, f.id, f.emotion, round(f.probability, 4)) for s in seconds for f in s.faces]
    assert rows == [(r["time"], int(r["face_id"]), max(EMOTIONS, key=lambda e: float(r[e.lower()])),
                     max(float(r[e.lower()]) for e in EMOTIONS)) for r in written]
    assert {f.id for frame in frames for f in frame.faces} == {1}  # one face, one id throughout
    assert frames[0].image.shape == (336, 596, 3)


def test_stream_stops_when_asked_and_still_reports_its_last_second(recognizer, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 75, fps=25)  # 3 seconds
    stream = recognizer.stream(str(clip))
    seconds = []
    for frame in stream:
        seconds += frame.seconds
        if frame.index == 30:  # a second and a bit in: as a Ctrl-C handler would
            stream.stop()
    # The frame read ahead (31) comes too, with the last second: frames 25-31.
    assert stream.frames == 32 and [s.second for s in seconds] == [0, 1]
    assert seconds[1].faces[0].frames == 7 and seconds[0].faces[0].frames == 25


def test_one_instance_shared_by_threads_gives_the_same_answers(recognizer):
    images = [astronaut_bgr(), astronaut_bgr()[:, ::-1], np.hstack([astronaut_bgr()] * 2)]
    expected = [recognizer.analyze(im) for im in images]
    results, errors = {}, []

    def work(n):
        try:
            for k in range(4):
                results[n, k] = recognizer.analyze(images[(n + k) % 3])
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    assert all(results[n, k] == expected[(n + k) % 3] for n, k in results)


def test_a_photo_rotated_by_its_exif_orientation_is_read_as_displayed(recognizer, tmp_path):
    from PIL import Image
    upright = astronaut_bgr()
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a phone stores, turned a quarter ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to display" in its EXIF
    Image.fromarray(stored[..., ::-1]).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    expected = recognizer.analyze(upright)
    for faces in (recognizer.analyze(tmp_path / "phone.jpg"), recognizer.analyze((tmp_path / "phone.jpg").read_bytes())):
        assert len(faces) == 1 and np.abs(np.array(faces[0].box) - expected[0].box).max() <= 6
        assert faces[0].emotion == expected[0].emotion


def test_every_hostile_input_is_a_user_error_with_one_line(recognizer, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(60000, 60000, pixels=False))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(print))  # refers to a global a model file may not name
    video_bomb = tmp_path / "photo.mp4"  # FFmpeg reads an image named .mp4 as a one-frame video
    video_bomb.write_bytes(png_bomb(12000, 12000))
    not_utf8 = os.fsdecode(os.fsencode(tmp_path) + b"/clip\xff.mp4")  # OpenCV itself crashes on such a name
    os.rename(write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 5), not_utf8)
    cases = [
        (lambda: recognizer.analyze(bomb), ImageTooLarge, "60000x60000"),
        (lambda: recognizer.analyze(bomb.read_bytes()), ImageTooLarge, "60000x60000"),
        (lambda: recognizer.analyze(np.zeros((3, 3, 3), np.uint8).repeat(5000, 0).repeat(5000, 1)),
         ImageTooLarge, "15000x15000"),
        (lambda: EmotionRecognizer(max_megapixels=0.01).analyze(astronaut_bgr()), ImageTooLarge, "0.01 megapixels"),
        (lambda: recognizer.analyze(text), UserError, "not an image file"),
        (lambda: recognizer.analyze(b""), UserError, "empty"),
        (lambda: recognizer.analyze(memoryview(b"abc")), UserError, "not an image"),
        (lambda: recognizer.analyze("a\x00b\nc.jpg"), UserError, "a\\x00b\\nc.jpg"),  # one line, escaped
        (lambda: recognizer.analyze(tmp_path / "missing.jpg"), UserError, "not found"),
        (lambda: recognizer.analyze(np.zeros((10, 10), np.float32)), UserError, "uint8"),
        (lambda: recognizer.analyze(12), UserError, "give a path"),
        (lambda: recognizer.stream(str(tmp_path / "missing.mp4")), UserError, "video not found"),
        (lambda: recognizer.stream(str(text)), UserError, "not a video"),
        (lambda: recognizer.stream(str(VIDEO), detect_every=0), UserError, "detect_every"),
        (lambda: recognizer.stream(str(VIDEO), max_seconds=float("nan")), UserError, "max_seconds nan"),
        (lambda: recognizer.stream(str(VIDEO), max_seconds=-1), UserError, "max_seconds -1"),
        (lambda: recognizer.stream(None), UserError, "webcam index"),
        (lambda: recognizer.stream(True), UserError, "webcam index"),
        (lambda: recognizer.stream(2 ** 40), UserError, "webcam index"),
        (lambda: EmotionRecognizer(max_megapixels=50).stream(str(video_bomb)), UserError, "12000x12000"),
        (lambda: recognizer.stream(not_utf8), UserError, "not UTF-8"),
        (lambda: EmotionRecognizer(detector="mtcnn"), UserError, "detector 'mtcnn'"),
        (lambda: EmotionRecognizer(tta="x"), UserError, "tta 'x'"),
        (lambda: EmotionRecognizer(model=tmp_path / "none.pkl"), UserError, "model not found"),
        (lambda: EmotionRecognizer(model=evil, runtime="keras"), UserError, "builtins.print"),
    ]
    for call, kind, fragment in cases:
        with pytest.raises(kind) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def readme_example():
    """The README's first Python block, as a user would paste it."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"```python\n(.*?)```", text, re.S)
    assert found, "README.md has no ```python block"
    return found.group(1)


@full
@needs_shared
def test_the_readme_example_runs_from_outside_the_repository(tmp_path):
    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    code = readme_example().replace('"photo.jpg"', repr(str(photo))).replace('"video.mp4"', repr(str(VIDEO)))
    (tmp_path / "example.py").write_text(code)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = run_script("predict.py", photo)
    emotion, percent = re.search(r"face 1 at .*: (\w+) , (\d+)%", printed.stdout).groups()
    first = result.stdout.splitlines()[0].split()
    assert first[0] == emotion and int(round(float(first[1]) * 100)) == int(percent)


def test_quiet_stderr_never_swaps_the_descriptor_from_a_worker_thread():
    import os
    from expressions import quiet_stderr
    outside = os.fstat(2).st_ino
    seen = {}

    def worker():
        with quiet_stderr():
            seen["thread"] = os.fstat(2).st_ino

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    with quiet_stderr():
        seen["main"] = os.fstat(2).st_ino
    assert seen["thread"] == outside  # the process's stderr, which other threads write to, untouched
    assert seen["main"] != outside and os.fstat(2).st_ino == outside  # muted in the main thread, then restored


def test_the_predictor_cache_keeps_a_few_models_not_every_one():
    import gc
    import weakref
    from expressions import model as nets
    x = np.zeros((2, 48, 48, 1), np.uint8)
    first = nets.build_cnn(width=2)
    nets.predict_in_batches(first, x, "none")
    alive = weakref.ref(first)
    for _ in range(5):
        nets.predict_in_batches(nets.build_cnn(width=2), x, "none")
    assert len(nets._predictors) <= 4
    del first
    gc.collect()
    assert alive() is None  # the cache let the first model go
