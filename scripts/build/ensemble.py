"""Average trained models into one model file, and write its reports.

The committed model is such an ensemble: three runs (seeds 1 and 2 of the recipe, and
seed 5 trained on random 44-pixel crops), each trained on every Training image. Trained
without the validation rows, the same three recipes averaged read 72.21 % of them against
70.09-70.61 % for each alone (10 views; iterations.md, section 9). The result is still one
Keras model that takes raw 48x48x1 pixels and returns 7 probabilities, so every script,
the TensorFlow Lite export and the web app use it unchanged; each face costs one
classification per member.

    python scripts/build/ensemble.py results/model/runs/{run21_refit_seed1,run22_refit_seed2,run23_refit_crop44}.pkl --no-evaluate

Each member's training record is read from the MEMBER_metrics.json that train.py wrote
beside it. Writes the ensemble (--out) with its metrics.json (test figures per
prediction mode and per split; validation figures unless a member trained on those rows),
confusion matrix and architecture text. Then `python scripts/build/calibrate.py` folds a
temperature into it (`--temperature 0.845` for the committed model, whose members trained
on the validation rows) and `python scripts/build/export_tflite.py --measure` makes its fast form.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, MODEL_DIR, UserError, import_tensorflow, machine, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.outputs import check_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", type=Path, help="two or more trained model .pkl files")
    p.add_argument("--out", type=Path, default=MODEL_DIR / "my_own_model.pkl",
                   help="the ensemble's model file; its reports go beside it (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="prepared data (default: %(default)s)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the test-set figures and confusion matrix")
    args = p.parse_args(argv)
    if len(args.members) < 2:
        p.error("an ensemble needs two or more members")
    return args


def member_record(path: Path):
    """The training record train.py wrote beside a member (MEMBER_metrics.json), without
    its test figures (the ensemble has its own)."""
    metrics_path = reports.artifact(path.parent, path.stem, "metrics.json")
    try:
        record = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"no training record for {path}: expected {metrics_path} ({err.__class__.__name__})") from None
    return {"model": str(path), **{k: v for k, v in record.items() if not k.startswith("test_") and k != "model"}}


def main(argv=None):
    args = parse_args(argv)
    out = check_file(args.out, "ensemble model")
    if out.resolve() in {m.resolve() for m in args.members}:
        raise UserError(f"--out {out} is one of the members: write the ensemble elsewhere")
    records = [member_record(m) for m in args.members]
    members = [nets.load_model(m) for m in args.members]
    tf, keras = import_tensorflow()
    ensemble = nets.build_ensemble(members)
    data = fer2013.load_prepared(args.data_dir)
    trained_on_validation = any(r.get("trained_on_validation") for r in records)
    if trained_on_validation:  # train.py --include-validation: those rows are no longer held out
        val = {mode: None for mode in nets.TTA_MODES}
        print("validation accuracy: not measured, a member trained on the validation rows", flush=True)
    else:
        y_val = data["y_val"].astype(int)
        val = {mode: float((nets.predict_in_batches(ensemble, data["x_val"], mode).argmax(1) == y_val).mean())
               for mode in nets.TTA_MODES}
        print("validation accuracy: " + ", ".join(f"{mode} {acc:.2%}" for mode, acc in val.items()), flush=True)
    nets.save_model(ensemble, out)
    given = sys.argv[1:] if argv is None else argv  # the options this run was given, also in-process
    metrics = {"model": out.name, "command": " ".join(["python scripts/build/ensemble.py", *map(str, given)]),
               "members": records, "val_accuracy": val["none"], "trained_on_validation": trained_on_validation,
               "val_accuracy_per_mode": val, "parameters": int(ensemble.count_params()),
               "train_wall_minutes": float(np.sum([r["train_wall_minutes"] for r in records])),
               "machine": {**machine(), "tensorflow": tf.__version__, "keras": keras.__version__}}
    reports.write_reports(ensemble, metrics, None, data, out.parent, out.stem, evaluate_test=not args.no_evaluate)
    print(f"saved {out} ({len(members)} members, {ensemble.count_params():,} parameters) and its reports")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
