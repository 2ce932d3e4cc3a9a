"""Video: opening a webcam or a file, writing an annotated video, and the per-second
summary of a stream (what predict_live_stream.py prints)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import UserError
from .outputs import check_file, mark_video, new_file_beside

VIDEO_SUFFIXES = (".mp4", ".avi")  # what the pip OpenCV wheel can write: mp4v and MJPG


class Capture:
    """A cv2.VideoCapture whose first frame was read ahead (to prove the source readable):
    the first read() hands that frame back instead of seeking to frame 0, a seek that loses
    frames of MPEG-TS files (all of them, or a segment of a concatenated one) and cannot
    work on webcams or live streams. Everything else goes to the capture."""

    def __init__(self, cap, first):
        self.cap, self.first, self.held = cap, first, None  # held: the frame grab() took from `first`

    def read(self, image=None):
        self.held = None
        if self.first is not None:
            frame, self.first = self.first, None
            return True, frame
        return self.cap.read(image)

    def grab(self):
        self.held, self.first = self.first, None
        return True if self.held is not None else self.cap.grab()

    def retrieve(self, image=None, flag=0):
        return (True, self.held) if self.held is not None else self.cap.retrieve(image, flag)

    def get(self, prop):
        import cv2
        value = self.cap.get(prop)
        if prop == cv2.CAP_PROP_POS_FRAMES and self.first is not None:
            return max(0.0, value - 1)  # the frame read ahead is still to come
        return value

    def set(self, prop, value):
        import cv2
        if prop in (cv2.CAP_PROP_POS_FRAMES, cv2.CAP_PROP_POS_MSEC, cv2.CAP_PROP_POS_AVI_RATIO):
            self.first = self.held = None  # after a seek the frame read ahead is not the next one
        return self.cap.set(prop, value)

    def isOpened(self):
        return self.cap.isOpened()

    def release(self):
        self.first = self.held = None
        self.cap.release()

    def __getattr__(self, name):  # getBackendName() and the rest of cv2.VideoCapture
        return getattr(self.cap, name)


def is_utf8(name: str) -> bool:
    """Whether a name is UTF-8 text (a file name of other bytes reaches Python as surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class FramesTooLarge(UserError):
    """A video whose frames are over the caller's megapixel limit: refused before the first is read."""


def open_video(source, max_megapixels=None, ffmpeg_only=False):
    """A webcam index (int) or a file path / URL opened for reading: a Capture (used like a
    cv2.VideoCapture, from the first frame), or None if it cannot be opened or read.
    FramesTooLarge if its frames are over max_megapixels, as the stream's header gives them,
    before one is read (a stream whose frames grow later is not caught: FFmpeg decodes
    them, and OpenCV scales them to the first size). ffmpeg_only: not OpenCV's other
    readers (its image-sequence reader would read an image file as a one-frame video)."""
    import cv2
    if isinstance(source, str) and not is_utf8(source):
        raise UserError(f"cannot read video {source}: its name is not UTF-8 text, which OpenCV cannot open: rename it")
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG) if ffmpeg_only else cv2.VideoCapture(source)
    if not cap.isOpened():
        return None
    if max_megapixels is not None:
        width, height = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
        if width * height > max_megapixels * 1e6:
            cap.release()
            raise FramesTooLarge(f"its frames are {width:.0f}x{height:.0f} pixels: the limit is {max_megapixels:g} "
                                 "megapixels")
    ok, frame = cap.read()  # some backends "open" a device or file they cannot read
    if not ok or frame is None:
        cap.release()
        return None
    return Capture(cap, frame)


# Uploaded videos (the web server's) are read only in these containers, known by their first
# bytes, and only by FFmpeg's demuxers for them: FFmpeg, not the client's file name, decides
# how a file is read, and a playlist (.m3u8) or concat script would have it read other files
# of the server's disk; OpenCV's image-sequence reader would decode an image unmeasured.
UPLOAD_CONTAINERS = "MP4, MOV, 3GP, AVI, MKV, WebM, MPEG-TS, M2TS, MPEG-PS, FLV, WMV, Ogg or raw H.264"
UPLOAD_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,avi,matroska,webm,mpegts,mpeg,mpegvideo,flv,asf,ogg,h264"


def video_container(head: bytes):
    """The suffix an upload whose first bytes are `head` (1 KB) is stored under, or None for
    anything but a video container above (images, playlists, scripts, text)."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return ".mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return ".mkv"
    for offset, packet in ((0, 188), (4, 192)):  # MPEG-TS; M2TS (AVCHD cameras) puts 4 bytes before each packet
        if len(head) > offset + 3 * packet and all(head[offset + k * packet] == 0x47 for k in range(4)):
            return ".ts"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):  # MPEG program stream, MPEG-1/2 video
        return ".mpg"
    if head[:3] == b"FLV":
        return ".flv"
    if head[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"):  # ASF (WMV)
        return ".wmv"
    if head[:4] == b"OggS":
        return ".ogv"
    if head[:5] in (b"\x00\x00\x00\x01\x67", b"\x00\x00\x00\x01\x09"):  # H.264 Annex B: SPS or delimiter
        return ".h264"
    return None


def restrict_upload_demuxers():
    """Let this process's FFmpeg open only UPLOAD_DEMUXERS (OpenCV reads the option at each
    open, so files already open are not affected); the web server calls it once at start."""
    options = [o for o in os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "").split("|")
               if o and not o.startswith("format_whitelist;")]
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join([*options, f"format_whitelist;{UPLOAD_DEMUXERS}"])


def video_fps(cap):
    import cv2
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and 1 <= fps <= 240 else 30.0


def check_video_path(path) -> Path:
    """An output video path, checked before any work: a .mp4 or .avi in a writable folder."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"cannot write video {path}: use a .mp4 or .avi name")
    if not is_utf8(str(path)):  # OpenCV's writer cannot take it
        raise UserError(f"cannot write video {path}: its name is not UTF-8 text: choose another")
    return check_file(path, "video")


class VideoFile:
    """A video written frame by frame into a temporary file beside `path`; close() marks it
    as written here and renames it into place, so an interrupted run never leaves half a
    video under the real name (close(keep=False) drops it)."""

    def __init__(self, path, fps):
        self.path, self.fps = check_video_path(path), fps
        self.writer = self.tmp = None

    def write(self, frame):
        import cv2
        if self.writer is None:  # the size is known from the first frame
            self.tmp = tmp = new_file_beside(self.path)
            codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
            self.writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), self.fps,
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
            if keep:
                mark_video(self.tmp)
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)
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


def open_at(file, second=0.0):
    """A video file opened at a given second, reached by reading forward from the start:
    seeking (CAP_PROP_POS_MSEC or _FRAMES) drops or misplaces frames of MPEG-TS files."""
    cap = open_video(str(file))
    if cap is None:
        raise UserError(f"cannot read video {file}")
    for _ in range(int(second * video_fps(cap) + 0.5)):  # OpenCV's own rounding of a seek
        if not cap.grab():  # shorter than that: from the start, as a short clip restarts
            cap.release()
            return open_at(file)
    return cap


def tile_videos(sources, path, size=(640, 480), grid=(3, 2), seconds=10.0, fps=30.0):
    """A video of several faces at once, made from one-face videos: each (file, start
    second, mirrored) of `sources` fills one cell of a `grid` (columns, rows) in frames of
    `size`, scaled to fit its cell on grey. Writes `seconds` of video to `path`."""
    import cv2
    cols, rows = grid
    if len(sources) > cols * rows:
        raise UserError(f"{len(sources)} videos do not fit a {cols}x{rows} grid")
    cell_w, cell_h = size[0] // cols, size[1] // rows
    out, caps = VideoFile(path, fps), []
    try:
        for file, start, _ in sources:
            caps.append(open_at(file, start))
        for _ in range(int(seconds * fps)):
            canvas = np.full((size[1], size[0], 3), 128, np.uint8)
            for n, (file, start, mirrored) in enumerate(sources):
                ok, frame = caps[n].read()
                if not ok:  # a short clip starts again from its first frame
                    caps[n].release()
                    caps[n] = open_at(file)
                    ok, frame = caps[n].read()
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
