"""Videos are read from their first frame without a seek back: MPEG-TS files (one segment,
or two joined with `cat`) keep every frame, .mp4/.avi give each frame once, and finished
videos get the permissions of a plain open(..., "w")."""
import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from conftest import run_script
from test_faces_video import astronaut_bgr, check_stream_output, write_video
from expressions.video import open_video, tile_videos

FPS = 10
SIZE = 160  # the face's square; the index strip below it
STRIP = 16  # one macroblock high, so the codec keeps its blocks apart
BITS = 8
FACE = cv2.resize(astronaut_bgr(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def frame(i):
    """The astronaut's face above the frame index i as 8 black/white blocks, most significant first."""
    strip = np.zeros((STRIP, SIZE, 3), np.uint8)
    width = SIZE // BITS
    for b in range(BITS):
        if i >> (BITS - 1 - b) & 1:
            strip[:, b * width:(b + 1) * width] = 255
    return np.vstack([FACE, strip])


def index(image):
    """The frame index drawn by frame(), read back through a lossy codec (block centres only)."""
    strip, width = image[SIZE + 4:SIZE + STRIP - 4].mean(axis=2), SIZE // BITS
    bits = [strip[:, b * width + 4:(b + 1) * width - 4].mean() > 128 for b in range(BITS)]
    return int("".join("1" if bit else "0" for bit in bits), 2)


def read_indices(cap):
    indices = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        indices.append(index(image))
    cap.release()
    return indices


def write_ts_opencv(path, indices):
    """MPEG-TS written by OpenCV's own FFmpeg (MPEG-2 video): no tool needed."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MPEG"), FPS, (SIZE, SIZE + STRIP))
    assert writer.isOpened(), "this OpenCV cannot write MPEG-TS"
    for i in indices:
        writer.write(frame(i))
    writer.release()
    return path


def write_ts_ffmpeg(path, indices):
    """MPEG-TS with H.264, as broadcast and HLS streams carry it: an .mp4 converted by ffmpeg."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: the H.264 MPEG-TS file cannot be made")
    mp4 = write_video(path.with_suffix(".mp4"), [frame(i) for i in indices], fps=FPS)
    result = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                             "-f", "mpegts", str(path)], capture_output=True, text=True, timeout=120)
    if "Unknown encoder" in result.stderr:
        pytest.skip(f"this ffmpeg has no H.264 encoder: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    mp4.unlink()
    return path


@pytest.fixture(params=["opencv-mpeg2", "ffmpeg-h264"])
def write_ts(request):
    return write_ts_opencv if request.param == "opencv-mpeg2" else write_ts_ffmpeg


def test_ts_is_read_from_its_first_frame_to_its_last(tmp_path, write_ts):
    ts = write_ts(tmp_path / "clip.ts", range(30))
    assert os.path.getsize(ts) < 200_000  # small frames, small file
    assert read_indices(open_video(str(ts))) == list(range(30))


def test_two_segment_ts_keeps_both_segments(tmp_path, write_ts):
    first, second = write_ts(tmp_path / "a.ts", range(30)), write_ts(tmp_path / "b.ts", range(30, 60))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())  # what `cat a.ts b.ts` makes
    assert read_indices(open_video(str(joined))) == list(range(60))


def test_live_stream_prints_every_second_of_a_ts(tmp_path, write_ts):
    ts = write_ts(tmp_path / "clip.ts", range(3 * FPS))
    result = run_script("predict_live_stream.py", "--source", ts, "--json", tmp_path / "run.json")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = check_stream_output(result.stdout)
    assert [line[:9] for line in lines] == ["00:00:00s", "00:00:01s", "00:00:02s"], lines
    assert not any("no face" in line for line in lines), lines
    assert json.loads((tmp_path / "run.json").read_text())["frames"] == 3 * FPS


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_mp4_and_avi_give_each_frame_once(tmp_path, suffix):
    video = write_video(tmp_path / f"clip{suffix}", [frame(i) for i in range(30)], fps=FPS)
    assert read_indices(open_video(str(video))) == list(range(30))
    # Used like a cv2.VideoCapture: position, grab/retrieve and a seek on a file that allows it.
    cap = open_video(str(video))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_POS_FRAMES) == 0
    assert cap.grab() and index(cap.retrieve()[1]) == 0 and cap.get(cv2.CAP_PROP_POS_FRAMES) == 1
    assert index(cap.read()[1]) == 1
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    assert index(cap.read()[1]) == 0
    cap.release()
    assert not cap.isOpened()


class FakeWebcam:
    """A camera: frames 0, 1, 2, ... that cannot be rewound; records every set()."""

    def __init__(self, source, frames=3):
        self.next, self.frames, self.calls = 0, frames, []
        FakeWebcam.last = self

    def isOpened(self):
        return True

    def read(self, image=None):
        if self.next >= self.frames:
            return False, None
        self.next += 1
        return True, frame(self.next - 1)

    def set(self, prop, value):
        self.calls.append((prop, value))
        return False

    def release(self):
        pass


def test_webcam_keeps_its_first_frame_and_a_dead_one_is_none(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", FakeWebcam)
    assert read_indices(open_video(0)) == [0, 1, 2]
    assert FakeWebcam.last.calls == []  # nothing asked of the camera
    monkeypatch.setattr(cv2, "VideoCapture", lambda source: FakeWebcam(source, frames=0))
    assert open_video(0) is None  # opens, but gives no frame


def test_tile_videos_starts_and_loops_a_ts_at_the_right_frame(tmp_path):
    ts = write_ts_opencv(tmp_path / "clip.ts", range(20))
    out = tile_videos([(ts, 1, False)], tmp_path / "tiled.mp4", size=(SIZE, SIZE + STRIP), grid=(1, 1),
                      seconds=4.5, fps=FPS)
    # From second 1 (frame 10) to the clip's end, then again from its first frame.
    assert read_indices(open_video(str(out))) == [*range(10, 20), *range(20), *range(15)]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_finished_video_gets_the_permissions_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        video = write_video(tmp_path / "clip.mp4", [frame(0)] * 3)
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert oct(video.stat().st_mode & 0o777) == oct(plain) == oct(0o666 & ~umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "plain.txt"]  # no temporary file left


def test_preprocess_crops_every_second_of_a_ts(tmp_path, write_ts):
    ts = write_ts(tmp_path / "clip.ts", range(3 * FPS))
    result = run_script("preprocess.py", "--video", ts, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("image*.png")) == ["image0.png", "image1.png", "image2.png"]
    kept = open_video(str(tmp_path / "out" / "input_video.mp4"))  # re-encoded from the .ts
    assert read_indices(kept) == list(range(3 * FPS))
