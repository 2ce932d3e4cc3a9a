"""The face pipeline: every face of a frame found, cropped and classified in one batch;
stable ids across frames; valence and arousal; the results (Face, Second) as the Python
API, the scripts and the web app give them; drawing them."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from . import EMOTIONS, IMAGE_SIZE, UserError
from .crops import crop_face
from .faces import DETECT_WIDTH, FaceDetector, to_gray
from .video import SecondSummary, format_clock


class EmotionReader:
    """Detect every face in a frame (or a photo, still=True), crop each one and classify
    them all in one call of `predict` (model.frame_predictor: images -> probabilities).
    For consecutive frames of a stream, detect_every=N searches every Nth frame and reuses
    the faces found in between (the faces are still cropped from and classified on every
    frame); a photo is always searched. alternate=True classifies the mirror images of every
    other frame's faces (a photo's faces both ways, averaged). One reader per stream: it
    remembers the last faces."""

    def __init__(self, predict, detector="yunet", crop="auto", detect_width=DETECT_WIDTH, detect_every=1,
                 alternate=False):
        if detect_every < 1:
            raise UserError(f"detect every {detect_every} frames: give 1 or more")
        self.detector = FaceDetector(detector, detect_width)
        self.predict = predict
        self.crop, self.alternate, self.classified = crop, alternate, 0
        self.detect_every, self.frames, self.faces, self.shape = detect_every, 0, [], None

    def __call__(self, frame, still=False):
        """Returns (faces, crops uint8 [n,48,48], probabilities [n,7])."""
        return self.classify(frame, self.locate(frame, still), still)

    def locate(self, frame, still=False):
        """The faces of a frame: searched, or those of the last search (see detect_every).
        A stream may run this stage in another thread than classify()."""
        if still or self.frames % self.detect_every == 0 or frame.shape[:2] != self.shape:
            self.faces = self.detector.detect(frame, still)
        self.frames, self.shape = self.frames + 1, frame.shape[:2]
        return self.faces

    def classify(self, frame, faces, still=False):
        """(faces, crops uint8 [n,48,48], probabilities [n,7]) of faces located in a frame."""
        if not faces:
            return [], np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros((0, len(EMOTIONS)), np.float32)
        gray = to_gray(frame)
        crops = np.stack([crop_face(gray, f, self.crop) for f in faces])
        x = crops[..., None]
        if self.alternate and still:
            return faces, crops, self.predict(np.concatenate([x, x[:, :, ::-1]])).reshape(2, len(x), -1).mean(0)
        if self.alternate:
            self.classified += 1
            x = x[:, :, ::-1] if self.classified % 2 == 0 else x
        return faces, crops, self.predict(x)


# Valence and arousal of the seven classes on Russell's circumplex, both in [-1, 1]:
# the positions of the matching words in Russell's multidimensional scaling of 28 affect
# words (J. A. Russell, "A circumplex model of affect", J. Personality and Social
# Psychology 39:1161-1178, 1980, Fig. 4), read off the figure. Russell's words: angry,
# annoyed (disgust has no word of its own there), afraid, happy, sad, astonished, and the
# origin for neutral. A face's valence and arousal are the probability-weighted sums.
VALENCE_AROUSAL = np.array([
    # valence, arousal
    [-0.52, 0.58],   # Angry     (angry)
    [-0.55, 0.41],   # Disgust   (annoyed)
    [-0.34, 0.64],   # Fear      (afraid)
    [0.83, 0.53],    # Happy     (happy)
    [-0.65, -0.27],  # Sad       (sad)
    [0.16, 0.89],    # Surprise  (astonished)
    [0.00, 0.00],    # Neutral   (origin)
])


def valence_arousal(probabilities):
    va = np.asarray(probabilities) @ VALENCE_AROUSAL
    return va[..., 0], va[..., 1]


def valence_colour(valence):
    """BGR box colour: red for negative, yellow-ish for neutral, green for positive valence."""
    t = float(np.clip((valence + 1) / 2, 0, 1))
    return (0, int(255 * min(1, 2 * t)), int(255 * min(1, 2 * (1 - t))))


def draw_faces(image, faces, numbered=False):
    """Draw a box and 'Emotion NN%' over every Face (in place), with its id if it has one
    (or its number, 1 for the largest, with numbered=True); returns the image."""
    import cv2
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for n, face in enumerate(faces, start=1):
        x, y, w, h = face.box
        colour = valence_colour(face.valence)
        label = face.id if face.id is not None else (n if numbered else None)
        text = (f"{label}: " if label is not None else "") + f"{face.emotion} {int(face.probability * 100)}%"
        thickness = max(2, image.shape[1] // 320)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        scale = max(0.5, image.shape[1] / 1000)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top, left = max(0, y - th - 8), max(0, min(x, image.shape[1] - tw - 6))  # the label stays in the frame
        cv2.rectangle(image, (left, top), (left + tw + 6, top + th + 8), colour, -1)
        cv2.putText(image, text, (left + 3, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image


@dataclass(frozen=True)
class Face:
    """One face and what it shows. `box` is x, y, width, height in the image's pixels;
    `probabilities` has all 7 classes (EMOTIONS order); `landmarks` the detector's 5
    points (eyes, nose, mouth corners) or None; in a stream, `id` stays the same across
    frames, and a Second's faces say in how many `frames` of it they were seen."""
    box: tuple
    probabilities: dict
    landmarks: tuple | None = None
    id: int | None = None
    frames: int | None = None

    @classmethod
    def of(cls, box, probabilities, landmarks=None, face_id=None, frames=None):
        """A Face from a box and a row of 7 probabilities."""
        marks = None if landmarks is None else tuple(tuple(float(v) for v in point) for point in landmarks)
        return cls(tuple(int(v) for v in box), {e: float(v) for e, v in zip(EMOTIONS, probabilities)}, marks,
                   None if face_id is None else int(face_id), None if frames is None else int(frames))

    @property
    def emotion(self):
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def probability(self):
        return self.probabilities[self.emotion]

    @property
    def valence(self):
        """Russell's valence in [-1, 1]: the probability-weighted positions of the classes."""
        return float(valence_arousal([self.probabilities[e] for e in EMOTIONS])[0])

    @property
    def arousal(self):
        return float(valence_arousal([self.probabilities[e] for e in EMOTIONS])[1])

    def to_dict(self):
        """JSON-ready: one face of POST /api/predict's answer (rounded as it rounds)."""
        out = {"box": list(self.box), "emotion": self.emotion, "probability": round(self.probability, 4),
               "probabilities": {e: round(v, 4) for e, v in self.probabilities.items()},
               "valence": round(self.valence, 3), "arousal": round(self.arousal, 3)}
        if self.id is not None:
            out["id"] = self.id
        if self.landmarks is not None:
            out["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        if self.frames is not None:
            out["frames"] = self.frames
        return out


@dataclass(frozen=True)
class Second:
    """One second of a stream: `second` counts from the start; `time` is HH:MM:SS, the
    wall clock for a webcam (or --realtime), else the position in the video; each face has
    its id, its probabilities averaged over the frames it was seen in, its last box and
    those frames' count, the most often seen face first."""
    second: int
    time: str
    faces: tuple

    @classmethod
    def of(cls, second, rows, clock=None):
        """From SecondSummary.faces() rows; `clock` is the stream's start (time.time()) for
        wall-clock names."""
        label = (datetime.fromtimestamp(clock + second).strftime("%H:%M:%S") if clock is not None
                 else format_clock(second).rstrip("s"))
        return cls(int(second), label, tuple(Face.of(box, p, face_id=i, frames=n) for i, p, box, n in rows))

    def to_dict(self):
        return {"time": self.time, "second": self.second, "faces": [f.to_dict() for f in self.faces]}


class FaceTracker:
    """Stable face ids across frames: each new box takes the id of the overlapping box
    seen most recently (greedy, by intersection over union); unmatched boxes get new ids."""

    def __init__(self, min_iou=0.3, forget_after=2.0):
        self.tracks = {}  # id -> (box, last time seen)
        self.next_id = 1
        self.min_iou, self.forget_after = min_iou, forget_after

    @staticmethod
    def iou(a, b):
        ax, ay, aw, ah = a
        bx, by, bw, bh = b
        iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
        ih = max(0, min(ay + ah, by + bh) - max(ay, by))
        inter = iw * ih
        return inter / float(aw * ah + bw * bh - inter)

    def update(self, boxes, t):
        self.tracks = {i: v for i, v in self.tracks.items() if t - v[1] <= self.forget_after}
        pairs = sorted(((self.iou(b, tb), n, i) for n, b in enumerate(boxes)
                        for i, (tb, _) in self.tracks.items()), reverse=True)
        ids, used = [None] * len(boxes), set()
        for score, n, i in pairs:
            if score >= self.min_iou and ids[n] is None and i not in used:
                ids[n] = i
                used.add(i)
        for n in range(len(boxes)):
            if ids[n] is None:
                ids[n] = self.next_id
                self.next_id += 1
            self.tracks[ids[n]] = (boxes[n], t)
        return ids


class StreamReader:
    """A stream read frame by frame: every face with an id that stays the same across
    frames (FaceTracker) and, each time a second ends, the per-second averages of its faces
    (SecondSummary). What predict_live_stream.py prints, the Python API's stream() yields
    and the web app shows. `read_faces` is an EmotionReader (one per stream: it remembers
    the last faces); `clock` is the stream's start (time.time()) when its seconds are named
    by the wall clock, else None (positions in a video)."""

    def __init__(self, read_faces, clock=None):
        self.read_faces, self.clock, self.tracker = read_faces, clock, FaceTracker()
        self.summary, self.second = SecondSummary(), None

    def read(self, frame, t, located=None):
        """The frame at t seconds -> (its faces with ids, [the Second that ended] when this
        frame began a new second, else []). `located`: the faces read_faces.locate() found
        in this frame, when another thread ran that stage; None runs it here."""
        ended = self._close(int(t))
        if located is None:
            located = self.read_faces.locate(frame)
        found, _, proba = self.read_faces.classify(frame, located)
        boxes = [f.box for f in found]
        ids = self.tracker.update(boxes, t)
        self.summary.add(ids, boxes, proba)
        return [Face.of(box, p, face_id=i) for box, p, i in zip(boxes, proba, ids)], ended

    def finish(self):
        """[the last Second], or [] if no frame was read."""
        return self._close(None)

    def _close(self, second):
        ended = []
        if self.second is not None and second != self.second:
            ended = [Second.of(self.second, self.summary.faces(), self.clock)]
            self.summary = SecondSummary()
        self.second = second
        return ended


TIMELINE_COLUMNS = ["time", "second", "face_id", "x", "y", "w", "h", *[e.lower() for e in EMOTIONS],
                    "valence", "arousal", "frames"]


def timeline_csv(seconds):
    """Seconds as CSV text: one row per second and face."""
    rows = [",".join(TIMELINE_COLUMNS)]
    for s in seconds:
        for f in s.faces:
            rows.append(",".join(map(str, [s.time, s.second, f.id, *f.box,
                                           *[f"{f.probabilities[e]:.4f}" for e in EMOTIONS],
                                           f"{f.valence:.3f}", f"{f.arousal:.3f}", f.frames])))
    return "\n".join(rows) + "\n"
