"""Evaluate the trained model on the test set, or read the emotions of the faces in photos.

    python scripts/predict.py                 # Accuracy on test set: NN%  (data/test.csv, 7,178 images)
    python scripts/predict.py --verbose       # + per split, per class, single pass vs flip averaging
    python scripts/predict.py photo.jpg ...   # every face in each photo: emotion, probability

By default the prediction averages the model's output over 10 views of the face: 5
positions 2 pixels apart, each also mirrored (test-time augmentation chosen on the
validation split); --tta chooses. The printed percentage is truncated, never
rounded up.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import expressions as ex

TTA = ex.TTA_MODES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="*", type=Path,
                   help="photos to read faces from (default: none, evaluate on the test set)")
    p.add_argument("--model", default="own",
                   help="model .pkl file, or own / pre_trained for the committed models (default: %(default)s)")
    p.add_argument("--test-csv", type=Path, default=ex.DATA_DIR / "test.csv",
                   help="labelled test images, course format emotion,pixels[,Usage] (default: %(default)s)")
    p.add_argument("--tta", choices=list(TTA), default=ex.DEFAULT_TTA,
                   help="test-time augmentation: none (single pass), flip (average with the mirror image), "
                        "flip+shift (10 views: 5 positions 2 px apart, each also mirrored) (default: %(default)s)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: --test-csv; val: the validation split from preprocess.py, for tuning (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="also print per-split and per-class figures")
    p.add_argument("--out", type=Path, default=None,
                   help="with photos: folder for the annotated images (default: none written)")
    return p.parse_args(argv)


def load_test_csv(path: Path):
    if not path.exists():
        raise ex.UserError(f"test data not found at {path}: run `python scripts/preprocess.py` first")
    df = ex.parse_csv_table(ex.read_csv_text(path), str(path))
    if "Usage" not in df.columns:
        df = df.assign(Usage="PublicTest")
    x, y, usage, _ = ex.validate_rows(df, str(path))
    return x[..., None], y.astype(int), usage


def evaluate(args):
    if args.split == "val":
        data = ex.load_prepared()
        x, y, usage = data["x_val"], data["y_val"].astype(int), None
    else:
        x, y, usage = load_test_csv(args.test_csv)
    model = ex.load_model(args.model)
    flip, shift = TTA[args.tta]
    report = ex.classification_report(y, ex.predict_in_batches(model, x, flip, shift=shift).argmax(1), usage)
    print(f"Accuracy on {'test' if args.split == 'test' else 'validation'} set: {int(report['accuracy'] * 100)}%")
    if args.verbose:
        single = ex.classification_report(y, ex.predict_in_batches(model, x, flip_tta=False).argmax(1), usage)
        for name, rep in [("single pass", single)] + ([] if args.tta == "none" else [(args.tta, report)]):
            splits = ", ".join(f"{s} {rep[f'accuracy_{s}']:.2%}" for s in ("PublicTest", "PrivateTest")
                               if f"accuracy_{s}" in rep)
            print(f"{name:>15}: {rep['accuracy']:.2%} on {rep['n']:,} images ({splits}); macro-F1 {rep['macro_f1']:.3f}")
        print(f"{'class':<10}{'precision':>10}{'recall':>8}{'F1':>7}{'support':>9}")
        for label, m in report["per_class"].items():
            print(f"{label:<10}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}{m['support']:>9,}")
    return 0


def read_photos(args):
    """Every face in every photo: emotion, probability, valence and arousal."""
    import cv2
    images = [(path, ex.read_image(path)) for path in args.photos]  # fail early on an unreadable file
    reader = ex.EmotionReader(ex.load_model(args.model), *TTA[args.tta], detect_width=1000)
    without_face = []
    for path, image in images:
        boxes, _, proba = reader(image, still=True)
        if not boxes:
            print(f"error: {path}: no face found", file=sys.stderr)
            without_face.append(path)
            continue
        for n, (box, p) in enumerate(zip(boxes, proba), start=1):
            k = int(np.argmax(p))
            valence, arousal = ex.valence_arousal(p)
            print(f"{path}: face {n} at x={box[0]} y={box[1]} w={box[2]} h={box[3]}: "
                  f"{ex.EMOTIONS[k]} , {int(round(p[k] * 100))}% (valence {valence:+.2f}, arousal {arousal:+.2f})")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            out_path = args.out / (path.stem + "_emotions.png")
            cv2.imwrite(str(out_path), ex.draw_faces(image.copy(), boxes, proba, list(range(1, len(boxes) + 1))))
    return 1 if without_face else 0


def main(argv=None):
    args = parse_args(argv)
    return read_photos(args) if args.photos else evaluate(args)


if __name__ == "__main__":
    ex.run_cli(lambda: main(sys.argv[1:]))
