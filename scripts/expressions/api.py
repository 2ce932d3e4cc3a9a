"""The Python API: one object that reads faces and their emotions from photos, frames,
videos and webcams, the path predict.py, predict_live_stream.py and the web app share.

    from expressions import EmotionRecognizer
    recognizer = EmotionRecognizer()
    faces = recognizer.analyze("photo.jpg")
    for frame in recognizer.stream("video.mp4"):
        for second in frame.seconds:
            ...
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import UserError
from . import model as nets
from .crops import CROP_MODES
from .faces import DETECT_EVERY, DETECT_WIDTH, DETECTORS, MAX_MEGAPIXELS, ImageTooLarge, decode_image, read_image
from .pipeline import EmotionReader, Face, StreamReader
from .video import open_video, video_fps


@dataclass(frozen=True)
class Frame:
    """One frame of a stream: its number (from 0), its time in seconds (the position in
    the video, or since the start for a webcam or with realtime=True), the BGR image, its
    faces with their ids, and the Seconds that ended with it (the per-second averages, as
    predict_live_stream.py prints them; the last frame also carries the last second)."""
    index: int
    time: float
    image: np.ndarray
    faces: list
    seconds: list


class EmotionRecognizer:
    """Every face in a photo, a frame, a video or a webcam, and the emotion it shows.

    The model (`own`, the committed one; `pre_trained`; or a .pkl path), the face detector
    (yunet or haar), the crop (auto or box), the test-time augmentation (none, flip,
    flip+shift: 10 views, predict.py's default for photos; alternate: the mirror on every
    other frame of a stream, both views of a photo) and the runtime (auto, tflite,
    keras) are chosen here, once, as the scripts' options of the same names choose them;
    images over `max_megapixels` (read from their header) are refused before decoding.

    Errors are `expressions.UserError` (ImageTooLarge is one), with a one-line message: the
    same words the scripts print after "error:".

    An instance may be shared between threads: its calls take turns (one classifier, which
    TensorFlow Lite lets only one thread use at a time). For calls side by side, make one
    instance per thread."""

    def __init__(self, model="own", detector="yunet", crop="auto", tta=nets.DEFAULT_TTA, runtime="auto",
                 max_megapixels=MAX_MEGAPIXELS):
        for name, value, choices in (("detector", detector, DETECTORS), ("crop", crop, CROP_MODES),
                                     ("tta", tta, nets.STREAM_TTA_MODES), ("runtime", runtime, nets.RUNTIMES)):
            if value not in choices:
                raise UserError(f"{name} {value!r}: choose from {', '.join(choices)}")
        if not max_megapixels > 0:
            raise UserError(f"max_megapixels {max_megapixels}: give a positive number")
        alternate = tta == nets.ALTERNATE  # one pass per face; EmotionReader mirrors every other frame
        predict, chosen = nets.frame_predictor(model, "none" if alternate else tta, runtime)
        # What classifies the faces (keras, or tflite and its kind) and why: a line for the user.
        self.runtime, self.runtime_reason = chosen.name, chosen.why
        self.model, self.detector, self.crop, self.tta = str(model), detector, crop, tta
        self.max_megapixels = max_megapixels
        self._lock = threading.RLock()

        def classify(crops):
            with self._lock:
                return predict(crops)

        self.classify = classify  # crops [n,48,48,1] -> probabilities [n,7]; thread-safe
        self._photos = EmotionReader(classify, detector, crop, alternate=alternate)

    def analyze(self, image, name=None):
        """Every face in a photo, largest first, as Face objects (an empty list if there is
        none). `image`: a path, encoded image bytes (JPEG, PNG, ...), or a numpy array (BGR
        or grey, uint8). `name` names the image in error messages."""
        picture = self.load(image, name)
        with self._lock:  # the detector is shared too
            found, _, proba = self._photos(picture, still=True)
        return [Face.of(f.box, p, landmarks=f.landmarks) for f, p in zip(found, proba)]

    def load(self, image, name=None):
        """A photo as the BGR array analyze() reads, or a UserError saying why not."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image, self.max_megapixels)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_image(bytes(image), name or "the image bytes", self.max_megapixels)
        if isinstance(image, np.ndarray):
            return checked_array(image, name or "the image array", self.max_megapixels)
        raise UserError(f"cannot read {type(image).__name__} as an image: give a path, image bytes or a numpy array")

    def stream(self, source=0, realtime=False, max_seconds=None, detect_every=DETECT_EVERY,
               detect_width=DETECT_WIDTH, overlap=True):
        """A VideoStream over a webcam (an int index) or a video file or URL: iterate it for
        one Frame per frame. realtime=True paces a file like a live stream and names its
        seconds by the wall clock; max_seconds stops early. Faces are searched in every
        `detect_every`th frame at `detect_width` pixels and followed in between.
        overlap=False does all the work in the iterating thread (for many streams side by
        side, one per core: analyze.py's workers); the frames and seconds are the same."""
        return VideoStream(self, source, realtime, max_seconds, detect_every, detect_width, overlap)

    def stream_reader(self, detect_every=DETECT_EVERY, detect_width=DETECT_WIDTH, clock=None, classify=None):
        """A StreamReader for frames that arrive one by one (the web app's WebSocket): its
        own face search and ids, this recognizer's classifier (or `classify`)."""
        return StreamReader(EmotionReader(classify or self.classify, self.detector, self.crop, detect_width,
                                          detect_every, alternate=self.tta == nets.ALTERNATE), clock)


def checked_array(image, name, max_megapixels):
    """A numpy image as the pipeline reads it: uint8, grey or BGR (an alpha channel dropped)."""
    import cv2
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise UserError(f"{name} is a {image.dtype} array of shape {image.shape}: give a uint8 image, grey "
                        "(height, width) or BGR (height, width, 3)")
    if image.shape[0] * image.shape[1] > max_megapixels * 1e6:
        raise ImageTooLarge(f"{name} is {image.shape[1]}x{image.shape[0]} pixels, over the limit of "
                            f"{max_megapixels:g} megapixels")
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


class VideoStream:
    """The frames of a webcam or a video, read one by one (a video of any length in
    constant memory) and iterated as Frame objects. `name`, `fps` and `live` say what is
    read; `frames` counts the frames read so far and `skipped` those a live source delivered
    while the pipeline was busy (it skips to the newest frame rather than fall behind);
    stop() (from a signal handler, say) ends the iteration: the frame already read ahead
    comes last, with the last second.

    Two stages run side by side, so that two cores do two things at once: a thread decodes
    each frame and searches it for faces, while the iterating thread crops, classifies and
    follows the faces of the frame before. The frames keep their order. overlap=False
    runs both stages in the iterating thread."""

    def __init__(self, recognizer, source, realtime, max_seconds, detect_every, detect_width, overlap=True):
        if not (isinstance(detect_every, int) and isinstance(detect_width, int)) or detect_every < 1 or detect_width < 16:
            raise UserError(f"detect_every {detect_every}, detect_width {detect_width}: give whole numbers, at least "
                            "1 and 16")
        if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and 0 <= max_seconds < math.inf):
            raise UserError(f"max_seconds {max_seconds}: give a number of seconds, 0 or more, or None for no limit")
        if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)) or (
                isinstance(source, int) and not 0 <= source < 1024):
            raise UserError(f"cannot read {source!r}: give a webcam index (0, 1, ...), a video file or a stream URL")
        self.recognizer, self.realtime, self.max_seconds = recognizer, realtime, max_seconds
        self.detect_every, self.detect_width, self.overlap = detect_every, detect_width, overlap
        self.live = isinstance(source, int)
        if self.live:
            self.name = f"webcam {source}"
        else:
            self.name = str(source)
            if "://" not in self.name and not Path(source).is_file():
                raise UserError(f"video not found: {source}")
        # A file's frames are measured before one is read, as photos are (a PNG named .mp4 is a one-frame video).
        self.capture = open_video(source if self.live else self.name,
                                  None if self.live else self.recognizer.max_megapixels)
        if self.capture is None:
            raise UserError(f"no webcam at index {source}" if self.live else
                            f"cannot read video {source}: not a video OpenCV can decode")
        self.fps, self.frames, self.skipped, self.stopped = video_fps(self.capture), 0, 0, False

    def stop(self):
        self.stopped = True

    def __iter__(self):
        wall_clock = self.live or self.realtime
        started = time.time()
        reader = self.recognizer.stream_reader(self.detect_every, self.detect_width, started if wall_clock else None)
        located = queue.Queue(maxsize=4)  # (image, t, faces) in order, then None; or the stage's exception
        halt = threading.Event()
        stage = threading.Thread(target=self._locate_faces, args=(reader.read_faces, located, halt, started),
                                 name="expressions-locate", daemon=True)
        in_line = None if self.overlap else self._located_frames(reader.read_faces, halt, started)
        if self.overlap:
            stage.start()
        frame = None  # each frame is handed out once the next one is read: the last one carries the last second
        try:
            while True:
                # stopped: frames decoded ahead are dropped
                item = None if self.stopped else located.get() if self.overlap else next(in_line, None)
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    if frame is not None:
                        yield replace(frame, seconds=frame.seconds + reader.finish())
                    return
                if frame is not None:
                    yield frame
                image, t, faces_found = item
                faces, ended = reader.read(image, t, faces_found)
                frame = Frame(self.frames, t, image, faces, ended)
                self.frames += 1
        finally:
            halt.set()
            if in_line is not None:
                in_line.close()
            while stage.is_alive():  # it may wait to put a frame: make room until it sees `halt`
                with contextlib.suppress(queue.Empty):
                    located.get(timeout=0.05)
            self.capture.release()

    def _located_frames(self, read_faces, halt, started):
        """The first stage: each frame decoded, with its faces found: (image, t, faces)."""
        images = self._newest_images(started, halt) if (self.live or self.realtime) else self._file_images()
        for image, t in images:
            if halt.is_set() or self.stopped or (self.max_seconds is not None and t >= self.max_seconds):
                break
            yield image, t, read_faces.locate(image)

    def _locate_faces(self, read_faces, located, halt, started):
        """The first stage in its own thread, its frames handed over in `located`."""
        item = None
        try:
            for found in self._located_frames(read_faces, halt, started):
                put_unless(located, found, halt)
        except Exception as err:  # handed to the iterating thread, which raises it
            item = err
        put_unless(located, item, halt)

    def _file_images(self):
        """Every frame of a file, timed by its position."""
        n = 0
        while True:
            ok, image = self.capture.read()
            if not ok:
                return
            yield image, n / self.fps
            n += 1

    def _newest_images(self, started, halt):
        """A live source (or a file paced like one) read as fast as it delivers by a thread
        of its own; each image handed out is the newest, timed by the wall clock. A frame
        that arrives before the last one was taken replaces it (counted in `skipped`)."""
        newest, finished = threading.Condition(), threading.Event()
        slot = {"item": None, "done": False, "error": None}

        def grab():
            n = 0
            try:
                while not (halt.is_set() or finished.is_set() or self.stopped):
                    ok, image = self.capture.read()
                    if not ok:
                        break
                    if not self.live:  # play the file at its own speed
                        time.sleep(max(0.0, n / self.fps - (time.time() - started)))
                    n += 1
                    with newest:
                        if slot["item"] is not None:
                            self.skipped += 1
                            if self.skipped == 1:
                                print(f"note: {self.name} delivers frames faster than they can be read: "
                                      "skipping to the newest frame", file=sys.stderr, flush=True)
                        slot["item"] = (image, time.time() - started)
                        newest.notify()
            except Exception as err:
                slot["error"] = err
            finally:
                with newest:
                    slot["done"] = True
                    newest.notify()

        grabber = threading.Thread(target=grab, name="expressions-grab", daemon=True)
        grabber.start()
        try:
            while True:
                with newest:
                    while slot["item"] is None and not slot["done"] and not halt.is_set():
                        newest.wait(0.1)
                    item, slot["item"] = slot["item"], None
                if item is None:
                    if slot["error"] is not None:
                        raise slot["error"]
                    return
                yield item
        finally:
            finished.set()
            grabber.join()


def put_unless(q, item, halt):
    """Put `item` in a bounded queue, waiting for room unless `halt` is set."""
    while not halt.is_set():
        with contextlib.suppress(queue.Full):
            q.put(item, timeout=0.05)
            return
