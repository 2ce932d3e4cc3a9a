"""Evaluate the trained model on the test set, or read the emotions of the faces in photos.

    python scripts/predict.py                 # Accuracy on test set: NN%  (data/test.csv, 7,178 images)
    python scripts/predict.py --verbose       # + per split, per class, single pass vs the chosen views
    python scripts/predict.py photo.jpg ...   # every face in each photo: emotion, probability
    python scripts/predict.py FOLDER --csv faces.csv --out annotated/

By default the prediction averages the model's output over 10 views of the face: 5
positions 2 pixels apart, each also mirrored (test-time augmentation chosen on the
validation split); --tta chooses. The printed percentage is truncated, never rounded up.

Outputs never overwrite an input, nor a file this toolkit did not write (the run is
refused before any work; our own earlier outputs are replaced, so a command can be
re-run); a folder search skips the images this toolkit wrote, such as NAME_emotions.png.
"""
import argparse
import sys
from pathlib import Path


from expressions import DATA_DIR, EMOTIONS, UserError, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.crops import add_crop_option
from expressions.faces import IMAGE_SUFFIXES, add_detector_option, add_max_megapixels_option, read_image
from expressions.pipeline import draw_faces
from expressions.outputs import (check_file, check_folder, check_user_outputs, own_image, unique_names, write_image,
                                 write_json, write_text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="*", type=Path,
                   help="photos, or folders searched recursively for photos, to read faces from (default: none, "
                        "evaluate on the test set). Unreadable files are reported and skipped; the exit code is 1 "
                        "if any was, or if no photo showed a face")
    nets.add_model_option(p)
    nets.add_tta_option(p)
    add_detector_option(p)
    add_crop_option(p)
    add_max_megapixels_option(p)
    nets.add_runtime_option(p)
    p.add_argument("--test-csv", type=Path, default=DATA_DIR / "test.csv",
                   help="labelled test images, course format emotion,pixels[,Usage] (default: %(default)s)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: --test-csv; val: the validation split from preprocess.py, for tuning "
                        "(default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="with --split val: the prepared data (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="also print per-split and per-class figures")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the figures (accuracy per split, per class, confusion matrix) as JSON; "
                        "never onto an input or a file this toolkit did not write (default: none)")
    p.add_argument("--csv", type=Path, default=None,
                   help="with photos: one row per face (file, face number, box, landmarks, the 7 probabilities, "
                        "emotion, valence, arousal) and one row with face 0 per photo without a face; never onto "
                        "an input or a file this toolkit did not write (default: none)")
    p.add_argument("--out", type=Path, default=None,
                   help="with photos: folder for the annotated images, NAME_emotions.png; refused if one of those "
                        "names is an input or a file this toolkit did not write (default: none written)")
    return p.parse_args(argv)


def evaluate(args):
    if args.split == "val":
        reports.require_held_out(args.model, "its validation accuracy would flatter it; the test set (the "
                                             "default) measures it")
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
                               **report}, mark=True)  # marked: a re-run may replace it
    return 0


CSV_COLUMNS = ["file", "face", "x", "y", "w", "h", *[f"{part}_{axis}" for part in
               ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left") for axis in "xy"],
               *[e.lower() for e in EMOTIONS], "emotion", "valence", "arousal"]


def photo_paths(paths):
    """The photos named, with every folder searched recursively for image files, except
    the images this toolkit wrote (its annotated NAME_emotions.png above all: a second run
    with --out inside the folder must not read the first one's outputs). Returns the
    photos and how many such images were skipped; a photo named itself is always read."""
    found, skipped = [], 0
    for path in paths:
        if path.is_dir():
            for p in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                if own_image(p):
                    skipped += 1
                else:
                    found.append(p)
        else:
            found.append(path)
    return found, skipped


def csv_rows(path, faces):
    """One row per Face, or one row with face 0 for a photo without a face."""
    if not faces:
        return [[path, 0] + [""] * (len(CSV_COLUMNS) - 2)]
    rows = []
    for n, face in enumerate(faces, start=1):
        marks = ([f"{v:.1f}" for point in face.landmarks for v in point] if face.landmarks is not None
                 else [""] * 10)
        rows.append([path, n, *face.box, *marks, *[f"{face.probabilities[e]:.4f}" for e in EMOTIONS],
                     face.emotion, f"{face.valence:.3f}", f"{face.arousal:.3f}"])
    return rows


def read_photos(args, paths, names):
    """Every face in every photo (EmotionRecognizer.analyze): emotion, probability,
    valence and arousal."""
    import csv
    import io
    import time
    from expressions import EmotionRecognizer
    recognizer = None  # loaded with the first readable photo: a run of unreadable files fails fast
    unreadable, with_face, rows = 0, 0, []
    last_progress = time.time()
    for k, (path, name) in enumerate(zip(paths, names), start=1):
        try:
            image = read_image(path, args.max_megapixels)
        except UserError as err:  # not an image, or too large (--max-megapixels): said, skipped, exit code 1
            print(f"error: {err}", file=sys.stderr)
            unreadable += 1
            continue
        recognizer = recognizer or EmotionRecognizer(args.model, args.detector, args.crop, args.tta, args.runtime,
                                                     args.max_megapixels)
        faces = recognizer.analyze(image, str(path))
        rows += csv_rows(path, faces)
        if not faces:
            print(f"{path}: no face found", file=sys.stderr)
        with_face += bool(faces)
        for n, face in enumerate(faces, start=1):
            x, y, w, h = face.box
            print(f"{path}: face {n} at x={x} y={y} w={w} h={h}: {face.emotion} , "
                  f"{int(round(face.probability * 100))}% (valence {face.valence:+.2f}, arousal {face.arousal:+.2f})")
        if args.out and faces:
            print(f"wrote {write_image(args.out / name, draw_faces(image.copy(), faces, numbered=True))}")
        if len(paths) > 20 and (time.time() - last_progress > 2 or k == len(paths)):
            print(f"{k:,} of {len(paths):,} photos", file=sys.stderr, flush=True)
            last_progress = time.time()
    if args.csv:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([CSV_COLUMNS] + rows)
        print(f"wrote {write_text(args.csv, text.getvalue())}")
    if not with_face and not unreadable:
        raise UserError(f"no face found in {'the photo' if len(paths) == 1 else f'any of {len(paths)} photos'}")
    return 1 if unreadable else 0


def main(argv=None):
    args = parse_args(argv)
    paths, names = [], []
    if args.photos:
        paths, skipped = photo_paths(args.photos)
        if skipped:
            print(f"skipped {skipped:,} image{'s' if skipped > 1 else ''} this toolkit wrote (annotated "
                  "NAME_emotions.png, figures) in the folders searched; name one to read it", file=sys.stderr)
        if not paths:
            raise UserError(f"no image files in {', '.join(map(str, args.photos))}"
                            + (" but the ones this toolkit wrote" if skipped else ""))
        names = unique_names(paths, "_emotions.png")  # photo.jpg in two folders: two files
        inputs = paths
    else:
        inputs = [args.test_csv] if args.split == "test" else list(args.data_dir.glob("*"))
    # Every output is checked before the work starts: writable, and neither an input nor
    # a file this toolkit did not write (see expressions/outputs.py).
    outputs = []
    if args.out:
        check_folder(args.out)
        outputs += [(args.out / name, "annotated image", None) for name in names]
    if args.json:
        outputs.append((check_file(args.json, "JSON file"), "JSON file", None))
    if args.csv:
        outputs.append((check_file(args.csv, "CSV file"), "CSV file", ",".join(CSV_COLUMNS)))
    check_user_outputs(outputs, [*inputs, nets.model_path(args.model)])
    return read_photos(args, paths, names) if args.photos else evaluate(args)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
