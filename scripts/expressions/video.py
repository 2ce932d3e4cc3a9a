"""Video: opening a webcam or a file, writing an annotated video, and the per-second
summary of a stream (what predict_live_stream.py prints)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from . import UserError
from .outputs import check_file

VIDEO_SUFFIXES = (".mp4", ".avi")  # what the pip OpenCV wheel can write: mp4v and MJPG


def open_video(source):
    """A cv2.VideoCapture for a webcam index (int) or a file path / URL; None if it cannot be opened."""
    import cv2
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        return None
    ok, frame = cap.read()  # some backends "open" a device or file they cannot read
    if not ok or frame is None:
        cap.release()
        return None
    if not isinstance(source, int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # back to the first frame of a file
    return cap


def video_fps(cap):
    import cv2
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and 1 <= fps <= 240 else 30.0


def check_video_path(path) -> Path:
    """An output video path, checked before any work: a .mp4 or .avi in a writable folder."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"cannot write video {path}: use a .mp4 or .avi name")
    return check_file(path, "video")


class VideoFile:
    """A video written frame by frame into a temporary file beside `path`; close() renames
    it into place, so an interrupted run never leaves half a video under the real name."""

    def __init__(self, path, fps):
        self.path, self.fps = check_video_path(path), fps
        self.writer = self.tmp = None

    def write(self, frame):
        import cv2
        if self.writer is None:  # the size is known from the first frame
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}-", suffix=self.path.suffix)
            os.close(fd)
            self.tmp = Path(tmp)
            codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
            self.writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                self.close(keep=False)
                raise UserError(f"cannot write video {self.path}")
        self.writer.write(frame)

    def close(self, keep=True):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp is not None:
            os.replace(self.tmp, self.path) if keep else self.tmp.unlink(missing_ok=True)
            self.tmp = None


def format_clock(seconds):
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}s"


class SecondSummary:
    """Collects the probabilities of each face id within one second."""

    MIN_SHARE = 0.3  # a face must be found in 30 % of the second's frames to be reported

    def __init__(self):
        self.proba, self.boxes, self.frames = {}, {}, 0

    def add(self, ids, boxes, proba):
        self.frames += 1
        for i, b, p in zip(ids, boxes, proba):
            self.proba.setdefault(i, []).append(p)
            self.boxes[i] = b

    def faces(self):
        """[(id, mean probabilities, last box, frames)], the most often seen face first.
        Boxes seen in only a few frames are left out: the detector's rare false alarms
        (a patch of background) do not last, real faces do."""
        rows = [(i, np.mean(ps, axis=0), self.boxes[i], len(ps)) for i, ps in self.proba.items()
                if len(ps) >= self.MIN_SHARE * self.frames]
        return sorted(rows, key=lambda r: (-r[3], r[0]))


def tile_videos(sources, path, size=(640, 480), grid=(3, 2), seconds=10.0, fps=30.0):
    """A video of several faces at once, made from one-face videos: each (file, start
    second, mirrored) of `sources` fills one cell of a `grid` (columns, rows) in frames of
    `size`, scaled to fit its cell on grey. Writes `seconds` of video to `path`."""
    import cv2
    cols, rows = grid
    if len(sources) > cols * rows:
        raise UserError(f"{len(sources)} videos do not fit a {cols}x{rows} grid")
    cell_w, cell_h = size[0] // cols, size[1] // rows
    caps = []
    for file, start, _ in sources:
        cap = open_video(str(file))
        if cap is None:
            raise UserError(f"cannot read video {file}")
        cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000)
        caps.append(cap)
    out = VideoFile(path, fps)
    try:
        for _ in range(int(seconds * fps)):
            canvas = np.full((size[1], size[0], 3), 128, np.uint8)
            for n, (cap, (file, start, mirrored)) in enumerate(zip(caps, sources)):
                ok, frame = cap.read()
                if not ok:  # a short clip starts again
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                scale = min(cell_w / frame.shape[1], cell_h / frame.shape[0])
                frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                if mirrored:
                    frame = frame[:, ::-1]
                h, w = frame.shape[:2]
                x0 = n % cols * cell_w + (cell_w - w) // 2
                y0 = n // cols * cell_h + (cell_h - h) // 2
                canvas[y0:y0 + h, x0:x0 + w] = frame
            out.write(canvas)
        out.close()
    finally:
        out.close(keep=False)
        for cap in caps:
            cap.release()
    return Path(path)
