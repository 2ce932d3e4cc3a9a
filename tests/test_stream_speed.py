"""The stream on every CPU: a live source faster than the pipeline, the two stages side by
side, and the fast classifier against the full ensemble (no timing assertions)."""
import time

import numpy as np
import pytest

from conftest import SHARED, full
from expressions import EmotionRecognizer, api, machine
from expressions import model as nets
from test_faces_video import astronaut_bgr

VIDEO = SHARED / "media" / "fer_woman2.mp4"
needs_video = pytest.mark.skipif(not VIDEO.exists(), reason=f"no shared video at {VIDEO} (set EXPRESSIONS_SHARED)")


class FastWebcam:
    """A webcam that delivers a frame every millisecond, for `seconds` of wall clock."""

    def __init__(self, seconds):
        self.image, self.until, self.delivered = astronaut_bgr(), time.time() + seconds, 0

    def read(self):
        time.sleep(0.001)
        if time.time() > self.until:
            return False, None
        self.delivered += 1
        return True, self.image.copy()

    def get(self, prop):
        return 1000.0

    def release(self):
        pass


def test_a_webcam_faster_than_the_pipeline_is_read_at_its_newest_frame(monkeypatch, capsys):
    recognizer = EmotionRecognizer(tta="none")
    camera = FastWebcam(seconds=2.5)
    monkeypatch.setattr(api, "open_video", lambda source, *limits: camera)
    classify = recognizer.classify

    def slow(crops):  # a CPU much slower than this one: 50 ms per frame
        time.sleep(0.05)
        return classify(crops)

    stream = recognizer.stream(0)
    monkeypatch.setattr(recognizer, "classify", slow)
    started, seconds, frames = time.time(), [], []
    for frame in stream:
        frames.append(frame)
        seconds += frame.seconds
    elapsed = time.time() - started
    # It kept up with the wall clock instead of working through every frame delivered.
    assert stream.skipped > 0 and len(frames) + stream.skipped <= camera.delivered
    assert elapsed < 2.5 + 1.0
    assert [s.second for s in seconds] == list(range(len(seconds))) and len(seconds) >= 2
    assert all(s.faces and s.faces[0].emotion for s in seconds)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(b.time >= a.time for a, b in zip(frames, frames[1:]))
    assert capsys.readouterr().err.count("skipping to the newest frame") == 1  # said once


@needs_video
def test_the_two_stages_keep_the_frames_in_order_and_stop_cleanly():
    recognizer = EmotionRecognizer(tta="none")
    stream = recognizer.stream(str(VIDEO), max_seconds=3)
    whole = list(stream)
    assert [f.index for f in whole] == list(range(len(whole))) and len(whole) == round(3 * stream.fps)
    assert [f.time for f in whole] == sorted(f.time for f in whole)
    assert sum(len(f.seconds) for f in whole) == 3
    # Leaving the loop early stops the thread that decodes ahead, and the capture is released.
    stream = recognizer.stream(str(VIDEO))
    for frame in stream:
        if frame.index == 10:
            break
    import threading
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("expressions-")]


def test_the_runtime_is_timed_on_this_cpu_once_then_remembered(tmp_path, monkeypatch):
    import json
    import shutil
    forms = nets.tflite_forms("fast")
    assert len(forms) >= 2  # the fast model ships several TensorFlow Lite kinds, for different CPUs
    for path in [nets.model_path("fast")] + [p for _, p in forms]:
        shutil.copy(path, tmp_path / path.name)
        if path.suffix == ".tflite":
            shutil.copy(nets.record_path(path), tmp_path / nets.record_path(path).name)
    model = tmp_path / "fast_model.pkl"
    monkeypatch.setenv("EXPRESSIONS_CACHE", str(tmp_path / "cache"))
    predict, runtime = nets.frame_predictor(model, "none")
    assert runtime.name.startswith("tflite ") and "the fastest form on this CPU" in runtime.why
    assert machine()["cpu"] in runtime.why and machine()["cpu_flags"] in runtime.why
    cache = json.loads((tmp_path / "cache" / "runtimes.json").read_text())
    (choice,) = cache.values()
    assert len(choice["timings"]) >= 2 and runtime.name.split()[1] == choice["kind"]
    # Remembered: the next start does not time anything, and classifies alike.
    monkeypatch.setattr(nets, "per_face_ms", lambda *a, **k: pytest.fail("timed again"))
    again, same = nets.frame_predictor(model, "none")
    crops = np.stack([np.roll(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48), k) for k in range(3)])[..., None]
    assert same == runtime and np.array_equal(again(crops), predict(crops))
    # A damaged cache is measured again, not trusted; a form of another model is no candidate.
    monkeypatch.undo()
    monkeypatch.setenv("EXPRESSIONS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "runtimes.json").write_text(json.dumps({k: {"kind": "../../x"} for k in cache}))
    assert nets.frame_predictor(model, "none")[1].name.startswith("tflite ")
    (remeasured,) = json.loads((tmp_path / "cache" / "runtimes.json").read_text()).values()
    assert remeasured["kind"] in [kind for kind, _ in forms] and len(remeasured["timings"]) >= 2
    stale = tmp_path / "fast_model.int8.tflite.json"
    if stale.exists():
        record = json.loads(stale.read_text())
        stale.write_text(json.dumps({**record, "source_sha256": "0" * 64}))
        assert "int8" not in [kind for kind, _ in nets.tflite_forms(model)]


@needs_video
def test_alternate_mirrors_every_other_frame_of_a_stream_and_a_photo_gets_both_views():
    seen = {}
    for tta in ("none", nets.ALTERNATE):
        recognizer = EmotionRecognizer("fast", tta=tta)
        crops, classify = [], recognizer.classify
        recognizer.classify = lambda x, crops=crops, classify=classify: crops.append(x.copy()) or classify(x)
        list(recognizer.stream(str(VIDEO), max_seconds=1))
        seen[tta] = crops
    assert len(seen["none"]) == len(seen[nets.ALTERNATE]) > 10
    for n, (plain, alternated) in enumerate(zip(seen["none"], seen[nets.ALTERNATE])):
        assert np.array_equal(alternated, plain if n % 2 == 0 else plain[:, :, ::-1]), n
    # A photo has no next frame: it gets both views at once, as flip gives them.
    photo = astronaut_bgr()
    both = EmotionRecognizer("fast", tta=nets.ALTERNATE).analyze(photo)[0].probabilities
    flip = EmotionRecognizer("fast", tta="flip").analyze(photo)[0].probabilities
    assert max(abs(both[e] - flip[e]) for e in flip) < 1e-4


@full
@needs_video
def test_the_fast_stream_says_what_the_full_ensemble_says_on_clear_seconds():
    """The stream's default classifier (the fast model, the mirror on every other frame)
    against the full ensemble with the mirror (the stream's classifier before it), on the
    shared videos: the same emotion wherever the ensemble is clear (at
    least 50 %), percentages within a few points."""
    clear_seconds = 0
    for video in sorted((SHARED / "media").glob("*.mp4")):
        lines = {}
        for name, model, tta in (("fast", "fast", nets.ALTERNATE), ("full", "own", "flip")):
            stream = EmotionRecognizer(model, tta=tta).stream(str(video))
            lines[name] = {s.second: s.faces[0] for frame in stream for s in frame.seconds if s.faces}
        clear = [t for t, face in lines["full"].items() if face.probability >= 0.5]
        assert set(clear) <= set(lines["fast"])
        assert [lines["fast"][t].emotion for t in clear] == [lines["full"][t].emotion for t in clear], video.name
        assert max(abs(lines["fast"][t].probability - lines["full"][t].probability) for t in clear) < 0.1
        clear_seconds += len(clear)
    assert clear_seconds >= 20


@full
def test_distillation_trains_toward_the_teacher_from_a_trained_start(prepared_data, tiny_model, tmp_path):
    from conftest import TINY, assert_clean_error, run_script
    start = tiny_model[0] / "my_own_model.pkl"
    args = [*TINY, "--epochs", "1", "--data-dir", prepared_data, "--out", tmp_path, "--no-evaluate",
            "--teacher", "own", "--teacher-copies", "1", "--include-validation"]
    result = run_script("train.py", *args, "--init-from", start)
    assert result.returncode == 0, result.stderr[-2000:]
    # The originals and one warped copy of each, all labelled by the teacher, are what it trains on.
    import re
    labelled = int(re.search(r"labelling ([\d,]+) images \(1 warped copies of each\) with own", result.stdout)[1]
                   .replace(",", ""))
    assert f"{labelled:,} train /" in result.stdout and labelled % 2 == 0
    metrics = __import__("json").loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["teacher"] == "own" and metrics["config"]["label_smoothing"] == 0.0
    assert metrics["config"]["init_from"] == str(start)
    wrong = run_script("train.py", *args, "--width", "16", "--init-from", start, "--fresh")
    assert_clean_error(wrong, "--init-from", "do not fit")
