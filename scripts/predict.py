"""Evaluate the trained model on the test set, or read the emotions of the faces in photos.

    python scripts/predict.py                 # Accuracy on test set: NN%  (data/test.csv, 7,178 images)
    python scripts/predict.py --verbose       # + per split, per class, single pass vs the chosen views
    python scripts/predict.py photo.jpg ...   # every face in each photo: emotion, probability

By default the prediction averages the model's output over 10 views of the face: 5
positions 2 pixels apart, each also mirrored (test-time augmentation chosen on the
validation split); --tta chooses. The printed percentage is truncated, never rounded up.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, EMOTIONS, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.faces import EmotionReader, draw_faces, read_image, valence_arousal
from expressions.outputs import check_file, check_folder, unique_names, write_image, write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="*", type=Path,
                   help="photos to read faces from (default: none, evaluate on the test set)")
    nets.add_model_option(p)
    nets.add_tta_option(p)
    p.add_argument("--test-csv", type=Path, default=DATA_DIR / "test.csv",
                   help="labelled test images, course format emotion,pixels[,Usage] (default: %(default)s)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: --test-csv; val: the validation split from preprocess.py, for tuning "
                        "(default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="with --split val: the prepared data (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="also print per-split and per-class figures")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the figures (accuracy per split, per class, confusion matrix) as JSON "
                        "(default: none)")
    p.add_argument("--out", type=Path, default=None,
                   help="with photos: folder for the annotated images, NAME_emotions.png (default: none written)")
    return p.parse_args(argv)


def evaluate(args):
    if args.split == "val":
        data = fer2013.load_prepared(args.data_dir)
        x, y, usage = data["x_val"], data["y_val"].astype(int), None
    else:
        x, y, usage = fer2013.load_test_csv(args.test_csv)
    model = nets.load_model(args.model)
    report = nets.classification_report(y, nets.predict_in_batches(model, x, args.tta).argmax(1), usage)
    print(f"Accuracy on {'test' if args.split == 'test' else 'validation'} set: {int(report['accuracy'] * 100)}%")
    if args.verbose:
        single = report if args.tta == "none" else nets.classification_report(
            y, nets.predict_in_batches(model, x, "none").argmax(1), usage)
        for name, rep in [("single pass", single)] + ([] if args.tta == "none" else [(args.tta, report)]):
            splits = ", ".join(f"{s} {rep[f'accuracy_{s}']:.2%}" for s in ("PublicTest", "PrivateTest")
                               if f"accuracy_{s}" in rep)
            print(f"{name:>15}: {rep['accuracy']:.2%} on {rep['n']:,} images ({splits}); macro-F1 {rep['macro_f1']:.3f}")
        print(f"{'class':<10}{'precision':>10}{'recall':>8}{'F1':>7}{'support':>9}")
        for label, m in report["per_class"].items():
            print(f"{label:<10}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}{m['support']:>9,}")
    if args.json:
        write_json(args.json, {"model": str(nets.model_path(args.model)), "split": args.split, "tta": args.tta,
                               **report})
    return 0


def read_photos(args):
    """Every face in every photo: emotion, probability, valence and arousal."""
    images = [(path, read_image(path)) for path in args.photos]  # fail early on an unreadable file
    names = unique_names(args.photos, "_emotions.png")  # photo.jpg in two folders: two files
    reader = EmotionReader(nets.load_model(args.model), args.tta, detect_width=1000)
    without_face = []
    for (path, image), name in zip(images, names):
        boxes, _, proba = reader(image, still=True)
        if not boxes:
            print(f"error: {path}: no face found", file=sys.stderr)
            without_face.append(path)
            continue
        for n, (box, p) in enumerate(zip(boxes, proba), start=1):
            k = int(np.argmax(p))
            valence, arousal = valence_arousal(p)
            print(f"{path}: face {n} at x={box[0]} y={box[1]} w={box[2]} h={box[3]}: "
                  f"{EMOTIONS[k]} , {int(round(p[k] * 100))}% (valence {valence:+.2f}, arousal {arousal:+.2f})")
        if args.out:
            annotated = draw_faces(image.copy(), boxes, proba, list(range(1, len(boxes) + 1)))
            print(f"wrote {write_image(args.out / name, annotated)}")
    return 1 if without_face else 0


def main(argv=None):
    args = parse_args(argv)
    # Every output is checked before the work starts.
    if args.out:
        check_folder(args.out)
    if args.json:
        check_file(args.json, "JSON file")
    return read_photos(args) if args.photos else evaluate(args)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
