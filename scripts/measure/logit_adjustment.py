"""Logit adjustment at prediction time, measured on the validation split (iterations.md,
section 12, lever A): each member's logits minus tau x the log of the training class
frequencies, for tau = 0, 0.1, ..., 1, on the pre-refit members of the committed recipe
(the committed networks trained on the validation rows, so they cannot be judged there).

    python scripts/measure/logit_adjustment.py

Prints, for each tau: accuracy, macro recall, Disgust recall and ECE (10 views); the tau
the rule picks (the highest macro recall at most 0.5 points of accuracy below tau = 0's);
and the rule's two-fold check, which picks tau on one half of the validation images and
scores it on the other, both ways, so that the choice does not grade itself.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, MODEL_DIR, ROOT, run_cli
from expressions import calibration
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.outputs import write_json

PRE_REFIT = [MODEL_DIR / "runs" / f"{name}.pkl" for name in ("run3b", "run10_seed2", "run13_crop44")]
TAUS = np.round(np.arange(0, 1.01, 0.1), 1)
MAX_ACCURACY_LOSS = 0.005


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="*", default=PRE_REFIT,
                   help="the networks whose probabilities are averaged (default: the pre-refit three, "
                        "results/model/runs/{run3b,run10_seed2,run13_crop44}.pkl)")
    nets.add_tta_option(p)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help=f"prepared data (default: {DATA_DIR.relative_to(ROOT)}/ in the project)")
    return p.parse_args(argv)


def choose(table):
    """The rule: the tau with the highest macro recall whose accuracy is at most 0.5 points
    below tau = 0's."""
    floor = table[0]["accuracy"] - MAX_ACCURACY_LOSS
    allowed = [row for row in table if row["accuracy"] >= floor - 1e-12]
    return max(allowed, key=lambda row: row["macro_recall"])["tau"]


def sweep(view_log_p, log_prior, y, rows=None):
    rows = np.arange(len(y)) if rows is None else rows
    return [{"tau": float(t), **calibration.class_figures(calibration.with_prior_adjustment(view_log_p[:, :, rows], log_prior, t),
                                       y[rows])} for t in TAUS]


def main(argv=None):
    args = parse_args(argv)
    for name in args.members:
        reports.require_held_out(str(name), "logit adjustment is tuned there")
    data = fer2013.load_prepared(args.data_dir)
    y = data["y_val"].astype(int)
    log_prior = calibration.training_log_prior(data)  # as calibrate.py folds it
    view_log_p = np.concatenate([calibration.view_log_probabilities(nets.load_model(str(m)), data["x_val"], args.tta)
                                 for m in args.members], axis=1)
    table = sweep(view_log_p, log_prior, y)
    print(f"validation, {len(y):,} images, --tta {args.tta}, {len(args.members)} networks averaged")
    print(" tau  accuracy  macro recall  Disgust recall  ECE")
    for row in table:
        print(f" {row['tau']:.1f}  {row['accuracy']:7.2%}  {row['macro_recall']:11.2%}  "
              f"{row['disgust_recall']:13.2%}  {row['ece']:.4f}")
    tau = choose(table)
    print(f"the rule picks tau = {tau:.1f} on the whole validation split")
    halves = fer2013.stratified_validation_split(y, 0.5, seed=0)
    check = []
    for pick, score in ((halves, ~halves), (~halves, halves)):
        picked = choose(sweep(view_log_p, log_prior, y, np.flatnonzero(pick)))
        held = sweep(view_log_p, log_prior, y, np.flatnonzero(score))
        chosen = next(row for row in held if row["tau"] == picked)
        check.append({"tau": picked, "accuracy_change": chosen["accuracy"] - held[0]["accuracy"],
                      "macro_recall_change": chosen["macro_recall"] - held[0]["macro_recall"]})
        print(f"two-fold check: tau = {picked:.1f} picked on one half; on the other half accuracy "
              f"{100 * check[-1]['accuracy_change']:+.2f} points, macro recall "
              f"{100 * check[-1]['macro_recall_change']:+.2f} points against tau = 0")
    accuracy_change = float(np.mean([c["accuracy_change"] for c in check]))
    recall_change = float(np.mean([c["macro_recall_change"] for c in check]))
    adopted = recall_change >= 0.02 and accuracy_change >= -MAX_ACCURACY_LOSS
    print(f"held-out halves, mean: accuracy {100 * accuracy_change:+.2f} points, macro recall "
          f"{100 * recall_change:+.2f} points: {'adopted' if adopted else 'not adopted'} by the rule "
          "(macro recall up by 2 points or more, accuracy down by at most 0.5 points)")
    if args.json:
        write_json(args.json, {"members": [str(m) for m in args.members], "tta": args.tta, "prior": np.exp(log_prior).tolist(),
                               "table": table, "tau": tau, "two_fold_check": check, "adopted": adopted})
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
