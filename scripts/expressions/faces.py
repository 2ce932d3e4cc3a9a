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
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"}
DETECT_WIDTH = 320  # video frames are searched at this width: YuNet finds faces of 10-300 px
DETECT_EVERY = 2  # frames of a stream: search every Nth one, reuse its faces in between (measured: docs/live.md)
PHOTO_SIDES = (640, 320, 160)  # a photo's longer side for the search; the smaller ones find huge faces
MIN_SEARCH_SIDE = 10  # pixels: YuNet finds no face in a strip narrower than this


@dataclass
class Face:
    box: tuple            # x, y, w, h in image pixels
    landmarks: object     # [5, 2] float (right eye, left eye, nose, right and left mouth corner), or None
    score: float


# Images are measured from their header before their pixels are decoded: a 2 MB PNG can
# claim 30000x30000 pixels (2.7 GB decoded). The scripts' limit; the web server's is lower.
MAX_MEGAPIXELS = 200.0


class ImageTooLarge(UserError):
    """An image whose header claims more pixels than the limit: refused before decoding."""


def image_size(source):
    """(width, height) read from an image's header (bytes, or a path), without decoding its
    pixels; None if it is in no format known here. Pillow's format plugins read the header;
    its own "decompression bomb" check is skipped, since the caller applies its own limit.
    Only plugins that recognise the file's first bytes are asked: a plugin without that
    check (PCD, TGA, ...) would report its own fixed size for a WebP or PPM file that
    OpenCV then decodes at the size its real header claims."""
    import io
    from PIL import Image
    Image.init()
    with (io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")) as fp:
        prefix = fp.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            try:
                if accept is None or accept(prefix) is not True:
                    continue
                fp.seek(0)
                width, height = factory(fp, "").size
                return int(width), int(height)
            except OSError as err:
                if err.errno is not None:  # the file could not be read: said as such by the caller
                    raise
            except Exception:  # noqa: BLE001 (a format's probe choking on bytes not its own: not this format)
                continue
    return None


def check_size(source, name, max_megapixels):
    """Refuse an image whose header is unknown or claims more than max_megapixels."""
    size = image_size(source)
    if size is None:
        raise UserError(f"cannot read {name}: not an image file (JPEG, PNG, WebP, AVIF, BMP, TIFF, GIF, "
                        "PNM or JPEG 2000) whose size can be checked before decoding")
    width, height = size
    if width * height > max_megapixels * 1e6:
        raise ImageTooLarge(f"{name} is {width}x{height} pixels ({width * height / 1e6:,.1f} megapixels), over "
                            f"the limit of {max_megapixels:g} megapixels (--max-megapixels)")


def read_image(path, max_megapixels=MAX_MEGAPIXELS):
    """A photo as an 8-bit BGR array, whatever its form (grey, 16-bit, with alpha, palette,
    EXIF-rotated), or a clear error; its size is checked from its header first."""
    import cv2
    import numpy as np
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        check_size(path, f"image {path}", max_megapixels)
        data = np.fromfile(path, np.uint8)  # read here, not by OpenCV: its imread crashes on a name that is not UTF-8
    except OSError as err:  # permission denied (the file or a folder above it), a read error: said as such
        raise UserError(f"cannot read image {path}: {err.strerror or err}") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # converts grey, 16-bit, alpha and palette images
    except cv2.error:  # OpenCV's own checks of what its decoder met
        image = None
    if image is None:
        raise UserError(f"cannot read image {path}: not an image file OpenCV can decode")
    return image


def decode_image(data: bytes, name="the upload", max_megapixels=MAX_MEGAPIXELS):
    """Image bytes (an upload, a frame) -> BGR array, the size checked from the header
    first: ImageTooLarge past the limit, UserError if not an image or a corrupt one."""
    import cv2
    import numpy as np
    if not data:
        raise UserError(f"{name} is empty, not an image")
    check_size(data, name, max_megapixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise UserError(f"{name} is not an image, or a corrupt one")
    return image


def add_max_megapixels_option(parser, default=MAX_MEGAPIXELS, why=""):
    parser.add_argument("--max-megapixels", type=float, default=default,
                        help="largest image accepted, in megapixels (width x height / 1e6), read from the "
                             "image's header before its pixels are decoded: a small file can claim a huge "
                             f"image (default: %(default)g{why})")


def to_gray(image):
    import cv2
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def add_detector_option(parser):
    parser.add_argument("--detector", choices=DETECTORS, default="yunet",
                        help="face detector: yunet (OpenCV's YuNet, shipped with the project: boxes and "
                             "landmarks) or haar (OpenCV's Haar cascade, for comparison); "
                             "scripts/measure/measure_detectors.py measures both: faces found and time "
                             "per photo and per video frame (default: %(default)s)")


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
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        if min(size) < MIN_SEARCH_SIDE:  # a strip (3000x2 pixels): no face fits, and 0 pixels would not resize
            return []
        small = image if scale == 1 else cv2.resize(
            image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
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
