"""Finding faces: reading any photo into a BGR image, and the two detectors, OpenCV's
YuNet (the default: a box, five landmarks and a score per face) and its Haar cascade
(boxes only, kept for comparison)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import UserError

# YuNet (MIT, OpenCV Zoo's face_detection_yunet_2023mar.onnx), shipped beside this file:
# a fresh clone has no network. Its identity is checked on load.
YUNET_PATH = Path(__file__).resolve().parent / "yunet" / "face_detection_yunet_2023mar.onnx"
YUNET_BYTES = 232_589
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
DETECTORS = ("yunet", "haar")
DETECT_WIDTH = 320  # video frames are searched at this width: YuNet finds faces of 10-300 px
DETECT_EVERY = 2  # frames of a stream: search every Nth one, reuse its faces in between (measured: README)
PHOTO_SIDES = (640, 320, 160)  # a photo's longer side for the search; the smaller ones find huge faces


@dataclass
class Face:
    box: tuple            # x, y, w, h in image pixels
    landmarks: object     # [5, 2] float (right eye, left eye, nose, right and left mouth corner), or None
    score: float


def read_image(path):
    """A photo as an 8-bit BGR array, whatever its form (grey, 16-bit, with alpha, palette),
    or a clear error."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # converts grey, 16-bit, alpha and palette images
    if image is None:
        raise UserError(f"cannot read image {path}: not an image file OpenCV can decode")
    return image


def to_gray(image):
    import cv2
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def add_detector_option(parser):
    parser.add_argument("--detector", choices=DETECTORS, default="yunet",
                        help="face detector: yunet (OpenCV's YuNet, shipped with the project: boxes and "
                             "landmarks, finds 99 %% of faces in real photos) or haar (OpenCV's Haar cascade, "
                             "for comparison: 74 %%) (default: %(default)s)")


class FaceDetector:
    """detect(image) -> [Face], largest first. The search runs on a copy of the image scaled
    to detect_width (frames of a video), or for a photo (still=True) to a longer side of
    640, 320 and 160 pixels in turn until a face is found."""

    def __init__(self, name="yunet", detect_width=DETECT_WIDTH):
        import cv2
        self.name, self.detect_width = name, detect_width
        if name == "yunet":
            check_yunet_file()
            self.model = cv2.FaceDetectorYN.create(str(YUNET_PATH), "", (320, 320), 0.6, 0.3, 5000)
        elif name == "haar":
            if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
                raise UserError("this OpenCV has no Haar cascades (OpenCV 5?): pip install 'opencv-python-headless<5'")
            self.model = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
            if self.model.empty():
                raise UserError("cannot load OpenCV's haarcascade_frontalface_default.xml")
        else:
            raise UserError(f"unknown face detector {name!r}: choose from {', '.join(DETECTORS)}")

    def detect(self, image, still=False):
        if image.shape[0] < 2 or image.shape[1] < 2:
            return []
        if not still:
            return self._detect_scaled(image, min(1.0, self.detect_width / image.shape[1]))
        for side in PHOTO_SIDES:
            faces = self._detect_scaled(image, side / max(image.shape[:2]))
            if faces:
                return faces
        return []

    def _detect_scaled(self, image, scale):
        import cv2
        small = image if scale == 1 else cv2.resize(
            image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if self.name == "haar":
            gray = to_gray(small)
            min_side = max(12, int(40 * min(scale, 1)))
            found = self.model.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
            faces = [Face(tuple(int(round(v / scale)) for v in b), None, 1.0) for b in (found if len(found) else [])]
        else:
            bgr = small if small.ndim == 3 else cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
            self.model.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, found = self.model.detect(bgr)
            faces = []
            for row in (found if found is not None else []):
                x, y, w, h = (row[:4] / scale)
                x0, y0 = max(0.0, x), max(0.0, y)  # YuNet's boxes may reach past the border
                box = (int(round(x0)), int(round(y0)), int(round(min(w - (x0 - x), image.shape[1] - x0))),
                       int(round(min(h - (y0 - y), image.shape[0] - y0))))
                if box[2] > 1 and box[3] > 1:
                    faces.append(Face(box, row[4:14].reshape(5, 2) / scale, float(row[14])))
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


def check_yunet_file():
    """The shipped YuNet file, present and unaltered (size and SHA-256), or a one-line error."""
    if not YUNET_PATH.is_file():
        raise UserError(f"the face detector file is missing: {YUNET_PATH} (restore it with `git checkout -- "
                        f"{YUNET_PATH.name}` in its folder, or use --detector haar)")
    data = YUNET_PATH.read_bytes()
    if len(data) != YUNET_BYTES or hashlib.sha256(data).hexdigest() != YUNET_SHA256:
        raise UserError(f"the face detector file {YUNET_PATH} is altered ({len(data):,} bytes, expected "
                        f"{YUNET_BYTES:,} with SHA-256 {YUNET_SHA256[:12]}...): restore it from git")
