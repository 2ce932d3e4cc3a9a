"""Measure which face crop makes camera faces look most like FER2013 faces to the model.

Each variant (detector, crop, histogram equalisation) is measured three ways with the
trained model:
  1. validation images (from Training, never test): each 48x48 image is enlarged 4x, the
     detector finds the face again, and the face is re-cropped by the variant. Accuracy on
     these re-crops, next to the accuracy on the original images, shows how close the crop
     comes to FER2013's own framing;
     The same again with every enlarged face turned by 15 degrees (alternately left and
     right), as heads tilt in front of a webcam: what aligning the eyes is for;
  2. with --media: the labelled photos in its photos/: correct, and faces not found;
  3. with --media: flicker on its videos: how often the top class changes from
     one frame to the next (lower is steadier).
--fit first prints FER2013's own framing as YuNet sees it on the validation faces: the
numbers behind the aligned crop (expressions/crops.py).

    python scripts/measure/measure_crop.py --fit
    python scripts/measure/measure_crop.py --media DIR    # also DIR's labelled photos and videos
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, run_cli
from expressions import crops
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.faces import FaceDetector, read_image, to_gray

# name: (detector, crop function of (gray, face), histogram equalisation)
VARIANTS = {
    "haar, box + 0.10 margin": ("haar", lambda g, f: crops.crop_box(g, f.box, 0.1), False),
    "yunet, box + 0.00 margin": ("yunet", lambda g, f: crops.crop_box(g, f.box, 0.0), False),
    "yunet, box + 0.10 margin": ("yunet", lambda g, f: crops.crop_box(g, f.box, 0.1), False),
    "yunet, box + 0.20 margin": ("yunet", lambda g, f: crops.crop_box(g, f.box, 0.2), False),
    "yunet, box + 0.10, equalised": ("yunet", lambda g, f: crops.crop_box(g, f.box, 0.1), True),
    "yunet, aligned": ("yunet", lambda g, f: crops.crop_aligned(g, f.landmarks), False),
    "yunet, aligned, 5 % tighter": ("yunet", lambda g, f: crops.crop_aligned(
        g, f.landmarks, crops.EYE_MOUTH * 1.05), False),
    "yunet, aligned, 5 % wider": ("yunet", lambda g, f: crops.crop_aligned(
        g, f.landmarks, crops.EYE_MOUTH / 1.05), False),
    "yunet, aligned + equalised": ("yunet", lambda g, f: crops.crop_aligned(g, f.landmarks), True),
    "yunet, box + 0.10, aligned if tilted > 8 deg (used)": ("yunet", lambda g, f: crops.crop_face(g, f, "auto"),
                                                            False),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    nets.add_model_option(p, default=nets.HELD_OUT_MODEL, why=": it measures on the validation faces, which the "
                          "committed model trained on; the crop table of docs/live.md was measured with this network")
    nets.add_tta_option(p, default="flip", why="; the live stream's mode, whose crops this measures")
    p.add_argument("--media", type=Path, default=None,
                   help="photos/ (with labels.csv) and *.mp4 folder (default: none, only the validation faces)")
    p.add_argument("--frames", type=int, default=150, help="frames read from each video (default: %(default)s)")
    p.add_argument("--fit", action="store_true", help="first print FER2013's framing as YuNet's landmarks see it")
    p.add_argument("--variants", default="",
                   help="measure only the variants whose name contains this text (default: all)")
    return p.parse_args(argv)


def fit_framing(faces, side):
    """FER2013's framing from YuNet's landmarks on (enlarged) validation faces: medians."""
    p = np.stack([f.landmarks for f in faces])
    eyes, mouth = (p[:, 0] + p[:, 1]) / 2, (p[:, 3] + p[:, 4]) / 2
    print(f"FER2013 framing on {len(faces):,} validation faces (YuNet landmarks, medians): eye-to-mouth distance "
          f"{np.median(np.linalg.norm(mouth - eyes, axis=1)) / side:.3f} of the side, eyes at "
          f"{np.median(eyes[:, 1]) / side:.3f} from the top, eye centre at {np.median(eyes[:, 0]) / side:.3f} "
          f"from the left; eye line tilt {np.median(np.abs(np.degrees(np.arctan2(*(p[:, 1] - p[:, 0]).T[::-1])))):.1f} "
          "degrees (median absolute)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    reports.require_held_out(args.model, "the crop measurement reads the validation faces; give a model "
                                         "trained without them")
    import cv2
    import pandas as pd
    model = nets.load_model(args.model)
    data = fer2013.load_prepared()
    big = [cv2.resize(x[..., 0], (192, 192), interpolation=cv2.INTER_CUBIC) for x in data["x_val"]]
    tilted = [cv2.warpAffine(b, cv2.getRotationMatrix2D((96, 96), 15 if i % 2 else -15, 1.0), (192, 192),
                             borderMode=cv2.BORDER_REPLICATE) for i, b in enumerate(big)]
    original = nets.predict_in_batches(model, data["x_val"], args.tta).argmax(1)
    detectors = {name: FaceDetector(name) for name in ("haar", "yunet")}
    found = {name: [d.detect(b, still=True) for b in big] for name, d in detectors.items()}
    found_tilted = {name: [d.detect(b, still=True) for b in tilted] for name, d in detectors.items()}
    if args.fit:
        fit_framing([f[0] for f in found["yunet"] if f], 192)
    photos = []
    if args.media is not None and (args.media / "photos" / "labels.csv").exists():
        labels = pd.read_csv(args.media / "photos" / "labels.csv")
        photos = [(read_image(args.media / "photos" / f), EMOTIONS.index(e.capitalize()))
                  for f, e in zip(labels.file, labels.emotion)]
    videos = []
    for path in sorted(args.media.glob("*.mp4")) if args.media is not None else []:
        cap, frames = cv2.VideoCapture(str(path)), []
        while len(frames) < args.frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        videos.append((path.name, frames))

    header = (f"{'variant':<30} {'val re-cropped':>22} {'val tilted 15 deg':>22} {'photos':>14}"
              + "".join(f" {n[:18]:>19}" for n, _ in videos))
    print(header + "\n" + "-" * len(header))
    for name, (detector, crop, equalise) in VARIANTS.items():
        if args.variants not in name:
            continue
        def cut(gray, face):
            c = crop(gray, face)
            return cv2.equalizeHist(c) if equalise else c
        row = f"{name:<30}"
        for images, detected in ((big, found[detector]), (tilted, found_tilted[detector])):
            keep = [i for i, f in enumerate(detected) if f]
            x = np.stack([cut(images[i], detected[i][0]) for i in keep])[..., None]
            y = data["y_val"][keep].astype(int)
            val = (nets.predict_in_batches(model, x, args.tta).argmax(1) == y).mean()
            row += f" {val:>7.2%} of {len(keep):,} ({(original[keep] == y).mean():.2%})"
        if photos:
            right = no_face = 0
            for image, label in photos:
                faces = detectors[detector].detect(image, still=True)
                no_face += not faces
                if faces:
                    c = cut(to_gray(image), faces[0])[None, ..., None]
                    right += int(nets.predict_in_batches(model, c, args.tta).argmax(1)[0] == label)
            row += f" {right:>3}/{len(photos)} ({no_face} none)"
        for _, frames in videos:
            cs = []
            for frame in frames:
                faces = detectors[detector].detect(frame)
                if faces:
                    cs.append(cut(to_gray(frame), faces[0]))
            top = nets.predict_in_batches(model, np.stack(cs)[..., None], args.tta).argmax(1)
            row += f" {'flicker ' + format((top[1:] != top[:-1]).mean(), '.1%'):>19}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
