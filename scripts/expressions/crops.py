"""The 48x48 grey crop of a face, framed like FER2013's faces: a square around the
detector's box widened by a margin, or, for a face whose eyes are tilted, aligned on the
landmarks (eyes level, scale and position from the eyes and the mouth). The choice was
measured (scripts/measure/measure_crop.py, docs/live.md "The face crop")."""
from __future__ import annotations

import numpy as np

from . import IMAGE_SIZE

CROP_MODES = ("auto", "box")  # auto: aligned when the eyes are tilted by more than TILT_TO_ALIGN
# Share of the detector's box added on each side of a box crop (measure_crop.py).
CROP_MARGIN = 0.1
# FER2013's own framing, measured by YuNet on the validation faces (measure_crop.py --fit):
# the eye-to-mouth distance as a share of the crop side, and the eyes' height and the
# face's centre line as shares of the side from the top and from the left.
EYE_MOUTH = 0.395
EYE_Y = 0.377
CENTRE_X = 0.505
# FER2013's faces are nearly level (median tilt 3 degrees) and training rotates them by up
# to 10: a face tilted more than this is aligned, a level one is box-cropped (the box crop
# read upright faces best, alignment tilted ones).
TILT_TO_ALIGN = 8.0


def crop_box(gray, box, margin=CROP_MARGIN):
    """A square centred on the box, widened by `margin` on each side; parts outside the
    frame are filled by repeating the border."""
    import cv2
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * (1 + 2 * margin))))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    face = gray[y0:y0 + side, x0:x0 + side]
    return cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def aligned_transform(landmarks, work, eye_mouth=EYE_MOUTH, eye_y=EYE_Y, centre_x=CENTRE_X):
    """The 2x3 affine map from image pixels to a `work`-pixel aligned crop: rotated about
    the eyes' centre so the eyes are level, scaled so the eye-to-mouth distance is
    `eye_mouth` of the side, the eyes' centre moved to (centre_x, eye_y) of the side."""
    import cv2
    p = np.asarray(landmarks, np.float64)
    eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    dx, dy = p[1] - p[0]
    if dx < 0:  # the detector's "right eye" is on the image's left: keep the face upright
        dx, dy = -dx, -dy
    angle = np.degrees(np.arctan2(dy, dx))
    side = max(2.0, np.linalg.norm(mouth - eyes) / eye_mouth)
    m = cv2.getRotationMatrix2D((float(eyes[0]), float(eyes[1])), float(angle), work / side)
    m[:, 2] += np.array([centre_x * work, eye_y * work]) - eyes
    return m


def crop_aligned(gray, landmarks, eye_mouth=EYE_MOUTH, eye_y=EYE_Y, centre_x=CENTRE_X):
    """The aligned crop (aligned_transform), warped at the face's own resolution (capped at
    4x the output) and then shrunk with area averaging."""
    import cv2
    p = np.asarray(landmarks, np.float64)
    side = max(2.0, np.linalg.norm((p[3] + p[4]) / 2 - (p[0] + p[1]) / 2) / eye_mouth)
    work = int(min(max(side, IMAGE_SIZE), 4 * IMAGE_SIZE))
    m = aligned_transform(p, work, eye_mouth, eye_y, centre_x)
    face = cv2.warpAffine(gray, m, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def eye_tilt(landmarks):
    """How far the eye line is from level, in degrees (0..90)."""
    (x0, y0), (x1, y1) = np.asarray(landmarks)[:2]
    return float(np.degrees(np.arctan(abs(y1 - y0) / max(abs(x1 - x0), 1e-6))))


def crop_face(gray, face, mode="auto"):
    """The crop of a detected face (a faces.Face): aligned if mode is auto and its
    landmarks show eyes tilted by more than TILT_TO_ALIGN degrees, else the box crop."""
    if mode == "auto" and face.landmarks is not None and eye_tilt(face.landmarks) > TILT_TO_ALIGN:
        return crop_aligned(gray, face.landmarks)
    return crop_box(gray, face.box)


def add_crop_option(parser):
    parser.add_argument("--crop", choices=CROP_MODES, default="auto",
                        help="auto: a square around the detector's box widened by 10 %% on each side, or for a "
                             f"face whose eyes are tilted by more than {TILT_TO_ALIGN:.0f} degrees (yunet's "
                             "landmarks), a crop rotated so the eyes are level and framed from the eyes and mouth "
                             "as FER2013's faces are; box: always the box crop (default: %(default)s)")
