"""The face pipeline: every face of a frame found, cropped and classified in one batch;
stable ids across frames; valence and arousal; drawing the result."""
from __future__ import annotations

import numpy as np

from datetime import datetime

from . import EMOTIONS, IMAGE_SIZE, UserError
from .crops import crop_face
from .faces import DETECT_WIDTH, FaceDetector, to_gray
from .video import SecondSummary, format_clock


class EmotionReader:
    """Detect every face in a frame (or a photo, still=True), crop each one and classify
    them all in one call of `predict` (model.frame_predictor: images -> probabilities).
    For consecutive frames of a stream, detect_every=N searches every Nth frame and reuses
    the faces found in between (the faces are still cropped from and classified on every
    frame); a photo is always searched. One reader per stream: it remembers the last faces."""

    def __init__(self, predict, detector="yunet", crop="auto", detect_width=DETECT_WIDTH, detect_every=1):
        if detect_every < 1:
            raise UserError(f"detect every {detect_every} frames: give 1 or more")
        self.detector = FaceDetector(detector, detect_width)
        self.predict = predict
        self.crop = crop
        self.detect_every, self.frames, self.faces, self.shape = detect_every, 0, [], None

    def __call__(self, frame, still=False):
        """Returns (faces, crops uint8 [n,48,48], probabilities [n,7])."""
        if still or self.frames % self.detect_every == 0 or frame.shape[:2] != self.shape:
            self.faces = self.detector.detect(frame, still)
        self.frames, self.shape = self.frames + 1, frame.shape[:2]
        faces = self.faces
        if not faces:
            return [], np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros((0, len(EMOTIONS)), np.float32)
        gray = to_gray(frame)
        crops = np.stack([crop_face(gray, f, self.crop) for f in faces])
        return faces, crops, self.predict(crops[..., None])


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


def draw_faces(image, boxes, probabilities, ids=None):
    """Draw a box and 'Emotion NN%' over every face (in place); returns the image."""
    import cv2
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for i, (box, p) in enumerate(zip(boxes, probabilities)):
        x, y, w, h = box
        valence, _ = valence_arousal(p)
        colour = valence_colour(valence)
        k = int(np.argmax(p))
        text = (f"{ids[i]}: " if ids is not None else "") + f"{EMOTIONS[k]} {int(p[k] * 100)}%"
        thickness = max(2, image.shape[1] // 320)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        scale = max(0.5, image.shape[1] / 1000)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top, left = max(0, y - th - 8), max(0, min(x, image.shape[1] - tw - 6))  # the label stays in the frame
        cv2.rectangle(image, (left, top), (left + tw + 6, top + th + 8), colour, -1)
        cv2.putText(image, text, (left + 3, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image




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
    (SecondSummary). What predict_live_stream.py prints and the web app shows.
    `read_faces` is an EmotionReader, or anything called like one."""

    def __init__(self, read_faces):
        self.read_faces, self.tracker = read_faces, FaceTracker()
        self.summary, self.second = SecondSummary(), None

    def read(self, frame, t):
        """The frame at t seconds -> (faces, ids, probabilities, ended): `ended` is
        (second, [(id, mean probabilities, last box, frames)]) when this frame began a new
        second, for the one before it; else None."""
        ended = self._close(int(t))
        faces, _, proba = self.read_faces(frame)
        boxes = [f.box for f in faces]
        ids = self.tracker.update(boxes, t)
        self.summary.add(ids, boxes, proba)
        return faces, ids, proba, ended

    def finish(self):
        """The last second's (second, rows), or None if no frame was read."""
        return self._close(None)

    def _close(self, second):
        ended = None
        if self.second is not None and second != self.second:
            ended = (self.second, self.summary.faces())
            self.summary = SecondSummary()
        self.second = second
        return ended


def face_record(box, p, face_id=None, landmarks=None):
    """One face as JSON-ready values: box, emotion, its probability, all 7, valence, arousal."""
    k = int(np.argmax(p))
    valence, arousal = valence_arousal(p)
    out = {"box": [int(v) for v in box], "emotion": EMOTIONS[k], "probability": round(float(p[k]), 4),
           "probabilities": {e: round(float(v), 4) for e, v in zip(EMOTIONS, p)},
           "valence": round(float(valence), 3), "arousal": round(float(arousal), 3)}
    if face_id is not None:
        out["id"] = int(face_id)
    if landmarks is not None:
        out["landmarks"] = np.round(np.asarray(landmarks, float), 1).tolist()
    return out


def second_record(second, rows, clock=None):
    """One ended second of a stream (StreamReader's `ended`) as a record: its time, the wall
    clock if `clock` is the stream's start (time.time()), else the position in the video
    (HH:MM:SS), and each face's averages with the frames it was seen in."""
    label = (datetime.fromtimestamp(clock + second).strftime("%H:%M:%S") if clock is not None
             else format_clock(second).rstrip("s"))
    return {"time": label, "second": int(second),
            "faces": [{**face_record(box, p, face_id), "frames": int(n)} for face_id, p, box, n in rows]}


TIMELINE_COLUMNS = ["time", "second", "face_id", "x", "y", "w", "h", *[e.lower() for e in EMOTIONS],
                    "valence", "arousal", "frames"]


def timeline_csv(records):
    """The per-second records as CSV text: one row per second and face."""
    rows = [",".join(TIMELINE_COLUMNS)]
    for r in records:
        for f in r["faces"]:
            rows.append(",".join(map(str, [r["time"], r["second"], f["id"], *f["box"],
                                           *[f"{f['probabilities'][e]:.4f}" for e in EMOTIONS],
                                           f"{f['valence']:.3f}", f"{f['arousal']:.3f}", f["frames"]])))
    return "\n".join(rows) + "\n"
