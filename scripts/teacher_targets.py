"""Save a teacher's probabilities on the training images, the soft targets that
`train.py --teacher` distils into one network.

The teacher is by default the committed model (the two-run ensemble, calibrated) with its
10-view prediction: its probabilities say not only which emotion a face shows but how
much it resembles the others (a frown that is half Angry, half Sad), which a one-hot
label cannot. They are computed once, on the un-augmented training images, and saved
with a fingerprint of those images so that a student never learns from misaligned rows.

    python scripts/teacher_targets.py            # results/model/teacher_targets.npz

Cost: one 10-view prediction of the 25,837 training images per member, on top of the
teachers' own training.
"""
import argparse
import sys
from pathlib import Path

from expressions import DATA_DIR, MODEL_DIR, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.outputs import check_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    nets.add_model_option(p)
    nets.add_tta_option(p)
    p.add_argument("--out", type=Path, default=MODEL_DIR / "teacher_targets.npz", help="(default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="prepared data (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = check_file(args.out, "teacher targets")
    model = nets.load_model(args.model)
    data = fer2013.load_prepared(args.data_dir)
    print(f"teacher {nets.model_path(args.model).name}, --tta {args.tta}, on {len(data['x_train']):,} training "
          "images", flush=True)
    probabilities = nets.predict_in_batches(model, data["x_train"], args.tta)
    agree = float((probabilities.argmax(1) == data["y_train"]).mean())
    fer2013.save_teacher_targets(out, probabilities, data["x_train"], nets.model_path(args.model).name, args.tta)
    print(f"wrote {out}: the teacher agrees with the training label on {agree:.2%} of the images, mean top "
          f"probability {probabilities.max(1).mean():.2%}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
