"""How good is it on your own faces? Labelled photos through the photo pipeline, scored.

    python scripts/evaluate_photos.py ../shared/media/photos/labels.csv
    python scripts/evaluate_photos.py labels.csv --json report.json --out evaluation/

LABELS.csv has the columns file and emotion: files relative to the CSV, an emotion one of
Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral in any case. Each photo is read as
`predict.py PHOTO` reads it; the largest face counts. Printed: the face-found rate,
accuracy on found faces and on every photo (a photo without a face counts as wrong),
macro recall and F1, per-class recall and precision, the expected calibration error of
the top probability, and the majority-class baseline. Rows with other labels, missing
files and files that are not images are counted and said, never fatal; a photo listed
twice counts once, one listed with two different emotions is left out; a stray quote (a
field running over lines) and a set with no face at all exit non-zero. --out writes confusion.png, reliability.png and photos.csv.
"""
import argparse
import sys
from pathlib import Path

from expressions import EMOTIONS, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option
from expressions.faces import add_detector_option, add_max_megapixels_option
from expressions.outputs import check_file, check_folder, check_user_outputs, write_json, write_text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labels", type=Path, help="the CSV of labelled photos: columns file and emotion")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for confusion.png, reliability.png and photos.csv (one row per photo)")
    nets.add_model_option(p)
    nets.add_tta_option(p)
    add_detector_option(p)
    add_crop_option(p)
    nets.add_runtime_option(p)
    add_max_megapixels_option(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from expressions import EmotionRecognizer, plots
    from expressions.evaluation import PHOTO_COLUMNS, describe, evaluate_photos, photos_csv
    outputs = []
    if args.json:
        outputs.append((check_file(args.json, "JSON file"), "JSON file", None))
    if args.out:
        check_folder(args.out)
        outputs += [(args.out / "confusion.png", "figure", None), (args.out / "reliability.png", "figure", None),
                    (args.out / "photos.csv", "CSV file", ",".join(PHOTO_COLUMNS))]
    check_user_outputs(outputs, [args.labels, nets.model_path(args.model)])
    recognizer = EmotionRecognizer(args.model, args.detector, args.crop, args.tta, args.runtime, args.max_megapixels)

    def progress(k, n):
        if n > 50 and k % 100 == 0:
            print(f"{k:,} of {n:,} photos", file=sys.stderr, flush=True)

    report, rows = evaluate_photos(args.labels, recognizer, progress)
    found = report["read"] - report["without_face"]
    print(f"photos: {report['labelled']:,} labelled, {report['read']:,} read" + describe(report))
    print(f"face found: {found:,} of {report['read']:,} ({report['face_found_rate']:.1%})")
    print(f"accuracy on found faces: {report['accuracy_found']:.1%}; on every photo: {report['accuracy_all']:.1%}")
    base = report["majority_baseline"]
    print(f"majority-class baseline: {base['accuracy']:.1%} (always {base['emotion']})")
    print(f"macro recall {report['macro_recall']:.3f}, macro F1 {report['macro_f1']:.3f}; expected calibration "
          f"error {report['ece']:.3f}")
    print(f"{'':<10}{'recall':>8}{'precision':>11}{'support':>9}")
    for e in EMOTIONS:
        m = report["per_class"][e]
        print(f"{e:<10}{m['recall']:>8.3f}{m['precision']:>11.3f}{m['support']:>9,}")
    if args.json:
        print(f"wrote {write_json(args.json, report, mark=True)}")
    if args.out:
        title = f"{report['model']} on {args.labels}: {found} faces".replace("$", r"\$")  # not matplotlib's maths
        plots.confusion_matrix(report["confusion_matrix"], args.out / "confusion.png", title)
        plots.reliability_diagram({args.tta: {"before": report["reliability"], "ece_before": report["ece"],
                                              "label_before": "these photos"}}, args.out / "reliability.png", title)
        write_text(args.out / "photos.csv", photos_csv(rows))
        print(f"wrote {args.out / 'confusion.png'}, reliability.png and photos.csv")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
