"""Faces in photos and videos: the preprocessing test, the live stream, photos, bad input."""
import json
import re

import cv2
import numpy as np
import pytest

from conftest import SHARED, assert_clean_error, needs_shared, run_script, full
from expressions import EMOTIONS, PREPROCESSING_TEST_DIR
from expressions.faces import FaceDetector
from expressions.pipeline import FaceTracker
from expressions.video import VideoFile

LINE = re.compile(r"(\d\d:\d\d:\d\ds) : (?:(Angry|Disgust|Fear|Happy|Sad|Surprise|Neutral) , (\d{1,3})%"
                  r"(?: \(face \d+\))?|no face)")
VIDEOS = sorted((SHARED / "media").glob("*.mp4"))
MAX_SECONDS = 20  # the first 20 s of each video (all of two of them): enough to judge the speed


def astronaut_bgr():
    from skimage import data
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def grace_hopper_bgr():
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)


def check_stream_output(stdout):
    """The brief's format, line by line; returns the per-second lines."""
    lines = stdout.splitlines()
    assert lines[0] == "Reading video stream ..."
    seconds = []
    for line in lines[1:]:
        if line == "Preprocessing ...":
            continue
        assert LINE.fullmatch(line), line
        seconds.append(line)
    return seconds


def test_preprocessing_test_on_the_generated_video(tmp_path):
    result = run_script("preprocess.py", "--video", "demo", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    crops = sorted(tmp_path.glob("image*.png"))
    assert len(crops) in (20, 21)
    assert [p.name for p in crops] == sorted(f"image{i}.png" for i in range(len(crops)))
    assert (tmp_path / "input_video.mp4").stat().st_size > 0
    detector = FaceDetector()
    for path in crops:
        crop = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert crop.shape == (48, 48) and crop.dtype == np.uint8  # one grey channel
        # Centred on the face: the detector finds the face again in the middle of the crop.
        big = cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC)
        faces = detector.detect(big, still=True)
        assert faces, path
        x, y, w, h = faces[0].box
        assert abs(x + w / 2 - 96) < 20 and abs(y + h / 2 - 96) < 20, (path, faces[0].box)
    # Running it again replaces the crops instead of mixing old and new ones.
    (tmp_path / "image99.png").write_bytes(crops[0].read_bytes())
    assert run_script("preprocess.py", "--video", tmp_path / "input_video.mp4", "--out", tmp_path).returncode == 0
    assert not (tmp_path / "image99.png").exists()


def test_committed_preprocessing_test():
    folder = PREPROCESSING_TEST_DIR
    cap = cv2.VideoCapture(str(folder / "input_video.mp4"))
    seconds = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    assert 19.5 <= seconds <= 21
    assert len(list(folder.glob("image*.png"))) in (20, 21)


@full
@needs_shared
@pytest.mark.parametrize("video", VIDEOS, ids=lambda p: p.name)
def test_live_stream_on_real_videos(video, tmp_path):
    """Every frame read, a line per second, the faces found; its speed is benchmark.py's
    to measure (a timed assertion here fails whenever the cores are shared)."""
    cap = cv2.VideoCapture(str(video))
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    duration = min(duration, MAX_SECONDS)
    result = run_script("predict_live_stream.py", "--source", video, "--csv", tmp_path / "new" / "t.csv",
                        "--plot", tmp_path / "t.png", "--json", tmp_path / "run.json", "--max-seconds", MAX_SECONDS)
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads((tmp_path / "run.json").read_text())
    expected_frames = min(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(np.ceil(MAX_SECONDS * cap.get(cv2.CAP_PROP_FPS))))
    assert abs(run["frames"] - expected_frames) <= 1
    lines = check_stream_output(result.stdout)
    assert len({line[:9] for line in lines}) >= int(duration)  # at least one line per second
    assert sum("no face" in line for line in lines) <= 1
    import pandas as pd
    table = pd.read_csv(tmp_path / "new" / "t.csv")  # a missing folder is created
    assert {"valence", "arousal", "happy", "face_id"} <= set(table.columns)
    assert np.allclose(table[[e.lower() for e in EMOTIONS]].sum(axis=1), 1, atol=1e-3)
    assert (tmp_path / "t.png").stat().st_size > 10_000


def write_video(path, frames, fps=10):
    writer = VideoFile(path, fps)
    for f in frames:
        writer.write(f)
    writer.close()
    return path


def test_webcam_fallback_to_recorded_video(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", [cv2.resize(astronaut_bgr(), (320, 320))] * 25)
    result = run_script("predict_live_stream.py", "--source", "9", "--fallback", clip,
                        "--save-video", tmp_path / "annotated.avi")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No webcam at index 9" in result.stderr
    lines = check_stream_output(result.stdout)
    assert len(lines) == 3 and all("no face" not in line for line in lines)
    cap = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 25


def test_blank_video_prints_no_face_lines_and_a_plot_that_says_so(tmp_path):
    clip = write_video(tmp_path / "blank.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 30)
    result = run_script("predict_live_stream.py", "--source", clip, "--plot", tmp_path / "t.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert check_stream_output(result.stdout) == [f"00:00:0{s}s : no face" for s in range(3)]
    assert (tmp_path / "t.png").stat().st_size > 1000 and "no face found" in result.stderr


@pytest.mark.parametrize("option", ["--csv", "--plot", "--json", "--save-video"])
def test_unwritable_outputs_are_refused_before_the_stream_starts(tmp_path, option):
    (tmp_path / "file").write_text("")
    for path in ("/proc/x.csv" if option != "--save-video" else "/proc/x.mp4", tmp_path / "file" / "x.png"):
        result = run_script("predict_live_stream.py", "--source", tmp_path / "none.mp4", option, path)
        assert_clean_error(result, "cannot write")
        assert result.stdout == ""  # nothing was read or printed first
    assert_clean_error(run_script("predict_live_stream.py", "--save-video", tmp_path / "x.gif"), ".mp4 or .avi")


def test_the_stream_never_replaces_its_input_or_a_file_it_did_not_write(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", [cv2.resize(astronaut_bgr(), (320, 320))] * 20)
    mine = tmp_path / "notes.csv"
    mine.write_text("my notes\n")
    link = tmp_path / "link.json"
    link.symlink_to(clip)  # a link to the input is the input
    before = clip.read_bytes()
    for option, path, said in (("--save-video", clip, "is one of the inputs"), ("--csv", mine, "did not write"),
                               ("--json", link, "is one of the inputs")):
        result = run_script("predict_live_stream.py", "--source", clip, option, path)
        assert_clean_error(result, said)
        assert result.stdout == ""  # refused before the stream starts
    assert clip.read_bytes() == before and mine.read_text() == "my notes\n"
    # A plot is a PNG, which carries the marker: another format could not be replaced on a re-run.
    assert_clean_error(run_script("predict_live_stream.py", "--source", clip, "--plot", tmp_path / "t.svg"), ".png")
    # Its own outputs, from an earlier run, are replaced: a command can be run again.
    outputs = ["--save-video", tmp_path / "a.mp4", "--csv", tmp_path / "t.csv", "--plot", tmp_path / "t.png",
               "--json", tmp_path / "run.json"]
    for _ in range(2):
        result = run_script("predict_live_stream.py", "--source", clip, *outputs)
        assert result.returncode == 0, result.stderr[-2000:]
    assert int(cv2.VideoCapture(str(tmp_path / "a.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 20


@full
def test_missing_and_corrupt_video(tmp_path):
    assert_clean_error(run_script("predict_live_stream.py", "--source", tmp_path / "none.mp4"), "video not found")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(50_000))
    assert_clean_error(run_script("predict_live_stream.py", "--source", corrupt), "cannot read video")
    assert_clean_error(run_script("preprocess.py", "--video", corrupt, "--out", tmp_path / "o"), "cannot read video")
    assert_clean_error(run_script("predict_live_stream.py", "--source", "9", "--fallback", tmp_path / "no.mp4"),
                       "video not found")


def test_photo_with_two_faces(tmp_path):
    left = cv2.resize(astronaut_bgr(), (400, 400))
    right = cv2.resize(grace_hopper_bgr(), (400, 470))[35:435]
    photo = tmp_path / "two.png"
    cv2.imwrite(str(photo), np.hstack([left, right]))
    result = run_script("predict.py", photo, "--out", tmp_path / "annotated")
    assert result.returncode == 0, result.stderr[-2000:]
    faces = re.findall(r"face (\d) at .*: (\w+) , (\d+)% \(valence ([-+]\d\.\d\d), arousal ([-+]\d\.\d\d)\)",
                       result.stdout)
    assert [f[0] for f in faces] == ["1", "2"], result.stdout
    assert (tmp_path / "annotated" / "two_emotions.png").exists()


def test_photos_with_the_same_name_in_two_folders_give_two_files(tmp_path):
    for folder, photo in (("a", astronaut_bgr()), ("b", grace_hopper_bgr())):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.jpg"), photo)
    result = run_script("predict.py", tmp_path / "a" / "face.jpg", tmp_path / "b" / "face.jpg", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["face-2_emotions.png", "face_emotions.png"]  # no hidden temporary files left either
    first, second = (cv2.imread(str(tmp_path / "o" / n)) for n in ("face_emotions.png", "face-2_emotions.png"))
    assert first.shape[:2] == astronaut_bgr().shape[:2] and second.shape[:2] == grace_hopper_bgr().shape[:2]


def test_photo_output_folder_that_cannot_be_written(tmp_path):
    cv2.imwrite(str(tmp_path / "face.png"), astronaut_bgr())
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", "/proc/x", tmp_path / "file" / "sub"):
        assert_clean_error(run_script("predict.py", tmp_path / "face.png", "--out", out), "cannot write")


def test_unreadable_photo_and_photo_without_face(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert_clean_error(run_script("predict.py", bad), "cannot read image")
    assert_clean_error(run_script("predict.py", tmp_path / "missing.jpg"), "image not found")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200), 90, np.uint8))
    assert_clean_error(run_script("predict.py", blank), "no face found")


@needs_shared
def test_labelled_photos_each_give_one_face():
    import pandas as pd
    labels = pd.read_csv(SHARED / "media" / "photos" / "labels.csv")
    paths = [SHARED / "media" / "photos" / f for f in labels.file]
    result = run_script("predict.py", *paths)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r": face 1 at", result.stdout)) == len(paths)


def test_tracker_keeps_ids_stable():
    tracker = FaceTracker()
    assert tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)], 0.0) == [1, 2]
    assert tracker.update([(205, 2, 50, 50), (3, 1, 50, 50)], 0.1) == [2, 1]
    assert tracker.update([(400, 0, 50, 50)], 0.2) == [3]
