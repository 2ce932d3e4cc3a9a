"""Faces: detection, the 48x48 crop framed like FER2013's, tracking across frames,
classification of every face of a frame in one batch, and drawing the result."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import EMOTIONS, IMAGE_SIZE, UserError
from .model import make_predictor

# Share of the detector's box added on each side before cropping. FER2013 faces are
# framed a little wider than OpenCV's Haar box; the value was chosen by measurement
# (see the README, "Face crop").
CROP_MARGIN = 0.1
DETECT_WIDTH = 320  # frames are searched for faces at this width: 4x fewer pixels than 640x480


def load_face_detector():
    """OpenCV's bundled frontal-face Haar cascade (ships in the opencv wheel, works offline)."""
    import cv2
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise UserError("this OpenCV has no Haar cascades (OpenCV 5?): pip install 'opencv-python-headless<5'")
    detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if detector.empty():
        raise UserError("cannot load OpenCV's haarcascade_frontalface_default.xml")
    return detector


def to_gray(image):
    import cv2
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_faces(gray, detector, detect_width=DETECT_WIDTH, min_face=40):
    """Every face in a grey frame, as (x, y, w, h) boxes in frame pixels, largest first.
    The search runs on a copy scaled down to detect_width for speed."""
    import cv2
    scale = min(1.0, detect_width / gray.shape[1])
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    min_side = max(12, int(min_face * scale))
    found = detector.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_face(gray, box, margin=CROP_MARGIN):
    """A 48x48 grey crop framed like FER2013: a square centred on the box, widened by
    `margin` on each side; parts outside the frame are filled by repeating the border."""
    import cv2
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    face = gray[y0:y0 + side, x0:x0 + side]
    return cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def read_image(path):
    """A photo as a BGR array, or a clear error."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: not an image file OpenCV can decode")
    return image


def detect_near(gray, detector, box, face_px=64):
    """Search for a face only around a box from the previous frame: the region is scaled
    so the old face is face_px wide and only faces of 0.6x..1.6x that size are tried,
    which costs a fraction of a full-frame search. Returns a box or None."""
    import cv2
    x, y, w, h = box
    x0, y0 = max(0, int(x - 0.5 * w)), max(0, int(y - 0.5 * h))
    x1, y1 = min(gray.shape[1], int(x + 1.5 * w)), min(gray.shape[0], int(y + 1.5 * h))
    scale = face_px / w
    roi = cv2.resize(gray[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found = detector.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5,
                                      minSize=(int(0.6 * face_px),) * 2, maxSize=(int(1.6 * face_px),) * 2)
    if not len(found):
        return None
    bx, by, bw, bh = max(found, key=lambda b: b[2] * b[3])
    return (int(x0 + bx / scale), int(y0 + by / scale), int(bw / scale), int(bh / scale))


class EmotionReader:
    """Detect every face in a frame and classify them all in one batch.

    For a stream of frames, the full-frame search runs every `full_every` frames (to pick
    up new faces); in between, each face is looked for only around where it just was.
    """

    def __init__(self, model, tta, margin=CROP_MARGIN, detect_width=DETECT_WIDTH, full_every=5):
        self.detector = load_face_detector()
        self.predict = make_predictor(model, tta)
        self.margin, self.detect_width, self.full_every = margin, detect_width, full_every
        self.previous, self.frame_no = [], 0

    def find_faces(self, gray):
        boxes = None
        if self.previous and self.frame_no % self.full_every:
            boxes = [detect_near(gray, self.detector, b) for b in self.previous]
            boxes = None if any(b is None for b in boxes) else boxes  # lost one: search everywhere
        if boxes is None:
            boxes = detect_faces(gray, self.detector, self.detect_width)
        self.previous = boxes
        self.frame_no += 1
        return boxes

    def __call__(self, frame, still=False):
        """Returns (boxes, crops uint8 [n,48,48], probabilities [n,7]). still=True: a
        photo, unrelated to the previous frame (full search only)."""
        gray = to_gray(frame)
        boxes = detect_faces(gray, self.detector, self.detect_width) if still else self.find_faces(gray)
        if not boxes:
            return [], np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros((0, len(EMOTIONS)), np.float32)
        crops = np.stack([crop_face(gray, b, self.margin) for b in boxes])
        return boxes, crops, self.predict(crops[..., None]).numpy()


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
        top = max(0, y - th - 8)
        cv2.rectangle(image, (x, top), (x + tw + 6, top + th + 8), colour, -1)
        cv2.putText(image, text, (x + 3, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
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
