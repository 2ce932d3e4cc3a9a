"""Make the model's probabilities honest: fit one temperature on the validation split and
fold it into the saved model.

"Happy , 73%" is read as a probability. A network trained with cross-entropy is often
over- or under-confident; dividing its logits by one scalar T, fitted to minimise the
negative log-likelihood on the validation images, fixes most of that without changing
any prediction of a single pass (the top class stays the top class). T is folded into the
model's last layer, so every script and the web app print calibrated probabilities and
the model still takes raw pixels and returns 7 probabilities.

    python scripts/build/calibrate.py              # fit, report, fold into results/model/my_own_model.pkl
    python scripts/build/calibrate.py --dry-run    # fit and report only
    python scripts/build/calibrate.py --temperature 0.845  # a model refit on the validation rows (train.py
                                             # --include-validation): apply its twin's T, fit nothing
    python scripts/build/calibrate.py --model adjusted/adjusted.pkl --prior-adjustment 0.6 --temperature 0.773 \
        --out adjusted   # logit adjustment (Disgust said more often), on the ensemble of runs 21-23
                         # made by build/ensemble.py; not the committed model (iterations.md, section 12)

--prior-adjustment TAU takes TAU x the log of each class's training share off the
logits (logit adjustment: Disgust, the rarest class, is said more often), chosen on the
validation split by `python scripts/measure/logit_adjustment.py` (iterations.md, section
12); the temperature is then fitted (or given) for the adjusted logits, and both are
folded: the model outputs softmax((z - TAU log prior) / T).

Reports, on the 7,178 test images and for each prediction mode: accuracy, expected
calibration error (15 bins) and negative log-likelihood before and after, in
results/model/calibration.json and the reliability diagram results/model/calibration.png.
Run it on a model that was not calibrated yet: on a calibrated one it finds T close to 1
and changes nothing that matters. Then `python scripts/build/export_tflite.py` makes the fast
form again from the new .pkl.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, MODEL_DIR, run_cli
from expressions import calibration, plots
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.outputs import check_file, write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    nets.add_model_option(p)
    nets.add_tta_option(p, default="flip", why="; the mode whose averaged probabilities T is fitted for, the "
                        "other modes reported with the same T. flip: the live stream's and the web app's mode, "
                        "where most probabilities are read; measured, its T also lowers the 10-view error, while "
                        "a T fitted on the 10 views over-sharpens the single pass")
    p.add_argument("--dry-run", action="store_true", help="fit and report, but do not change the model")
    p.add_argument("--temperature", type=float, default=None,
                   help="apply this T instead of fitting one: for a model that trained on the validation rows "
                        "(train.py --include-validation), where a fit would find them too easy; give the T "
                        "fitted for the same recipe trained without them (default: fit on validation)")
    p.add_argument("--match", default=None, metavar="MODEL",
                   help="fit the logit adjustment and T together so that the model's probabilities on the "
                        "validation images come closest to MODEL's (least cross-entropy; no labels used): for a "
                        "model distilled from MODEL before MODEL was adjusted, such as the stream's fast model, "
                        "which trained on those rows (default: fit T to the labels)")
    p.add_argument("--prior-adjustment", type=float, default=0.0, metavar="TAU",
                   help="logit adjustment folded in before the temperature: TAU x the log of each class's share "
                        "of the training rows taken off the logits (default: %(default)s, none)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="prepared data (default: %(default)s)")
    p.add_argument("--out", type=Path, default=MODEL_DIR,
                   help="folder for calibration.json and calibration.png (default: %(default)s)")
    args = p.parse_args(argv)
    if args.temperature is not None and not args.temperature > 0:
        p.error("--temperature must be positive")
    if args.match and (args.temperature is not None or args.prior_adjustment):
        p.error("--match fits the adjustment and T: leave out --temperature and --prior-adjustment")
    if not 0 <= args.prior_adjustment <= 2:
        p.error("--prior-adjustment must be 0 to 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    json_path, figure_path = check_file(args.out / "calibration.json"), check_file(args.out / "calibration.png")
    path = nets.model_path(args.model)
    if args.temperature is None and not args.match:
        reports.require_held_out(args.model, "a temperature fitted there would be too sharp; give --temperature "
                                             "(0.845 for the committed model; --temperature 1 --dry-run shows "
                                             "its figures as they are)")
    if not args.dry_run:
        check_file(path, "model")
    model = nets.load_model(args.model)
    data = fer2013.load_prepared(args.data_dir)
    y_val, y_test = data["y_val"].astype(int), data["y_test"].astype(int)
    log_prior = calibration.training_log_prior(data)
    # "before" is the model as given; "after" has the adjustment and T, folded into it at the end.
    if args.match:
        print(f"fitting the logit adjustment and the temperature to {args.match}'s probabilities on the "
              f"{len(y_val):,} validation images, --tta {args.tta}", flush=True)
        target = nets.predict_in_batches(nets.load_model(args.match), data["x_val"], args.tta)
        args.prior_adjustment, t = calibration.fit_to_model(
            calibration.view_log_probabilities(model, data["x_val"], args.tta), target, log_prior)
        fitted_on = f"validation, toward {args.match}"
    elif args.temperature is None:
        print(f"fitting the temperature on the {len(y_val):,} validation images, --tta {args.tta}", flush=True)
        views = calibration.view_log_probabilities(model, data["x_val"], args.tta)
        t = calibration.fit_temperature(views - args.prior_adjustment * log_prior, y_val)
        fitted_on = "validation"
    else:
        t, fitted_on = args.temperature, "given"
    if args.prior_adjustment:
        print(f"logit adjustment: tau = {args.prior_adjustment:.3g} x log prior taken off the logits", flush=True)
    print(f"T = {t:.3f} ({'softer' if t > 1 else 'sharper' if t < 1 else 'the same'} probabilities)")

    print("| test images, --tta | accuracy before | after | ECE before | after | NLL before | after |")
    print("|---|---|---|---|---|---|---|")
    figures, panels = {}, {}
    for mode in nets.TTA_MODES:
        views = calibration.view_log_probabilities(model, data["x_test"], mode)
        row = {}
        for key, adjustment, temperature in (("before", 0.0, 1.0), ("after", args.prior_adjustment, t)):
            p = calibration.with_temperature(views - adjustment * log_prior, temperature)
            row[f"accuracy_{key}"] = float((p.argmax(1) == y_test).mean())
            row[f"ece_{key}"] = calibration.ece(p, y_test)
            row[f"nll_{key}"] = calibration.nll(p, y_test)
            row[f"mean_confidence_{key}"] = float(p.max(1).mean())
            panels.setdefault(mode, {})[key] = calibration.reliability(p, y_test)
            panels[mode][f"ece_{key}"] = row[f"ece_{key}"]
        figures[mode] = row
        print(f"| {mode} | {row['accuracy_before']:.2%} | {row['accuracy_after']:.2%} | {row['ece_before']:.2%} | "
              f"{row['ece_after']:.2%} | {row['nll_before']:.4f} | {row['nll_after']:.4f} |", flush=True)

    write_json(json_path, {"model": path.name, "prior_adjustment": args.prior_adjustment,
                           "temperature": t, "fitted_on": fitted_on, "fitted_for_tta": args.tta,
                           "ece_bins": calibration.ECE_BINS, "test": figures, "folded": not args.dry_run,
                           "command": " ".join(["python scripts/build/calibrate.py",
                                                *map(str, sys.argv[1:] if argv is None else argv)])})
    adjusted = f"logit adjustment tau = {args.prior_adjustment:g}, then " if args.prior_adjustment else ""
    plots.reliability_diagram(panels, figure_path, f"{path.name} on the {len(y_test):,} test images: {adjusted}one "
                              f"temperature T = {t:.3g} " + ("given (--temperature)" if fitted_on == "given"
                                                             else f"fitted on {fitted_on} ({args.tta})"))
    print(f"wrote {json_path} and {figure_path}")
    if not args.dry_run:
        calibration.fold_prior_adjustment(model, log_prior, args.prior_adjustment)
        nets.save_model(calibration.fold_temperature(model, t), path)
        check = nets.predict_in_batches(nets.load_model(path), data["x_val"][:256], "none")
        expected = calibration.with_temperature(calibration.view_log_probabilities(
            model, data["x_val"][:256], "none"), 1.0)
        assert np.allclose(check, expected, atol=1e-4), "the saved model does not reproduce the folded one"
        print(f"folded {'the adjustment and ' if args.prior_adjustment else ''}T into {path}: run "
              "`python scripts/build/export_tflite.py` to make its fast form again")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
