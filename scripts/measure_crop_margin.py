"""Measure which face-crop margin makes camera faces look most like FER2013 faces to the model.

For every margin tried, three measurements with the trained model:
  1. validation images (from Training, never test): each 48x48 image is enlarged 4x, the
     Haar detector finds the face, and the face is cropped again with that margin. The
     accuracy on these re-cropped faces, next to the accuracy on the original images, shows
     how close the crop comes to FER2013's own framing;
  2. accuracy on the labelled photos in ../shared/media/photos (if present);
  3. flicker on the real videos in ../shared/media: how often the top class changes from
     one frame to the next (lower is steadier).

    python scripts/measure_crop_margin.py
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, SHARED_DIR, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.faces import crop_face, detect_faces, load_face_detector, read_image, to_gray

MEDIA = SHARED_DIR / "media"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--margins", default="0,0.05,0.1,0.15,0.2,0.3",
                   help="margins to try, share of the box added on each side (default: %(default)s)")
    nets.add_model_option(p)
    nets.add_tta_option(p, default="flip", why="; the live stream's mode, whose crops this measures")
    p.add_argument("--media", type=Path, default=MEDIA, help="photos/ and *.mp4 folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=150, help="frames read from each video (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import cv2
    import pandas as pd
    margins = [float(m) for m in args.margins.split(",")]
    model = nets.load_model(args.model)
    detector = load_face_detector()
    data = fer2013.load_prepared()

    # 1. validation faces, re-detected and re-cropped
    boxes, keep = [], []
    big_images = [cv2.resize(x[..., 0], (192, 192), interpolation=cv2.INTER_CUBIC) for x in data["x_val"]]
    for i, big in enumerate(big_images):
        found = detect_faces(big, detector, detect_width=192, min_face=60)
        if found:
            boxes.append(found[0])
            keep.append(i)
    keep = np.array(keep)
    y_val = data["y_val"][keep].astype(int)
    original = np.argmax(nets.predict_in_batches(model, data["x_val"][keep], args.tta), 1)
    print(f"validation images with a detected face: {len(keep):,} of {len(data['x_val']):,}; "
          f"accuracy on them as they are: {(original == y_val).mean():.2%}")

    photos = []
    if (args.media / "photos" / "labels.csv").exists():
        labels = pd.read_csv(args.media / "photos" / "labels.csv")
        for f, emotion in zip(labels.file, labels.emotion):
            gray = to_gray(read_image(args.media / "photos" / f))
            found = detect_faces(gray, detector, detect_width=1000)
            if found:
                photos.append((gray, found[0], EMOTIONS.index(emotion.capitalize())))
    videos = []
    for path in sorted(args.media.glob("*.mp4")):
        cap, frames = cv2.VideoCapture(str(path)), []
        while len(frames) < args.frames:
            ok, frame = cap.read()
            if not ok:
                break
            gray = to_gray(frame)
            found = detect_faces(gray, detector)
            if found:
                frames.append((gray, found[0]))
        videos.append((path.name, frames))

    header = f"{'margin':>7} {'val re-cropped':>15} {'photos':>9}" + "".join(f" {n[:18]:>19}" for n, _ in videos)
    print(header + "\n" + "-" * len(header))
    for m in margins:
        crops = np.stack([crop_face(big_images[i], b, m) for i, b in zip(keep, boxes)])[..., None]
        val_acc = (np.argmax(nets.predict_in_batches(model, crops, args.tta), 1) == y_val).mean()
        row = f"{m:>7.2f} {val_acc:>15.2%}"
        if photos:
            pc = np.stack([crop_face(g, b, m) for g, b, _ in photos])[..., None]
            correct = np.argmax(nets.predict_in_batches(model, pc, args.tta), 1) == np.array([y for _, _, y in photos])
            row += f" {correct.sum():>5}/{len(photos):<3}"
        for _, frames in videos:
            vc = np.stack([crop_face(g, b, m) for g, b in frames])[..., None]
            top = np.argmax(nets.predict_in_batches(model, vc, args.tta), 1)
            row += f" {'flicker ' + format((top[1:] != top[:-1]).mean(), '.1%'):>19}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
