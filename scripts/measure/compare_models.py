"""Compare two models on the validation split, paired image by image, and their ensemble.

Validation has 2,872 images: one standard error at 69 % is 0.86 points, so two accuracies
alone cannot tell a lever from luck. The paired test (McNemar's exact test on the images
where exactly one of the two models is right) can: it is how iterations.md decides.

    python scripts/measure/compare_models.py results/model/runs/run10_seed2.pkl
    python scripts/measure/compare_models.py A.pkl --baseline B.pkl --tta none

Prints each model's validation accuracy, the ensemble's (the mean of the two models'
probabilities), and McNemar's p for A against the baseline and for the ensemble against
the baseline; beside accuracy, each one's macro recall (the mean of the seven recalls),
Disgust recall and expected calibration error. A model may be several joined by "+" (their
mean, as ensemble.py builds it). With --ferplus, also accuracy on the FER+ taggers'
majority label of each validation image that has one, paired the same way. Test images are
used only with --split test, for the figures iterations.md reports once a lever is decided.

    python scripts/measure/compare_models.py results/model/runs/run24_ferplus.pkl --ferplus ../shared/data/fer2013/fer2013new.csv
    python scripts/measure/compare_models.py A.pkl --baseline run3b.pkl+run10_seed2.pkl+run13_crop44.pkl
"""
import argparse
import sys
from math import comb
from pathlib import Path


from expressions import DATA_DIR, ROOT, run_cli
from expressions import calibration
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate", help="the model to compare (a .pkl path, or own / pre_trained; several joined "
                                     "by + are averaged)")
    # Defaults shown relative to the project: its absolute path is this machine's, not the tool's.
    p.add_argument("--baseline", default=nets.HELD_OUT_MODEL,
                   help=f"the model it is compared with (default: {nets.HELD_OUT_MODEL.relative_to(ROOT)} in the "
                        "project, one network of the committed recipe; the committed model trained on the "
                        "validation rows, so it cannot be judged there; several joined by + are averaged)")
    nets.add_tta_option(p)
    p.add_argument("--ferplus", type=Path, default=None, metavar="VOTES_CSV",
                   help="FER+'s fer2013new.csv: also score the FER+ majority labels (default: off)")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="the images compared: validation decides levers; test (the 7,178 PublicTest and "
                        "PrivateTest images) is for reporting after a decision, never for choosing "
                        "(default: validation)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help=f"prepared data (default: {DATA_DIR.relative_to(ROOT)}/ in the project)")
    return p.parse_args(argv)


def mcnemar_p(a_right, b_right):
    """Two-sided exact McNemar p-value: of the images where exactly one model is right, how
    unlikely a split at least this lopsided is if both were equally good."""
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0, only_a, only_b
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n), only_a, only_b


def model_probabilities(names, x, tta):
    """The mean probabilities of the models named in `names` ("a.pkl+b.pkl")."""
    members = names.split("+")
    return sum(nets.predict_in_batches(nets.load_model(m), x, tta) for m in members) / len(members)


def main(argv=None):
    args = parse_args(argv)
    args.baseline = str(args.baseline)
    if args.split == "validation":  # the test images are fair for any model
        for name in (*args.candidate.split("+"), *args.baseline.split("+")):
            reports.require_held_out(name, "a comparison on them would flatter it; compare the same recipe "
                                           "trained without them")
    data = fer2013.load_prepared(args.data_dir)
    part = "val" if args.split == "validation" else "test"
    labels = {"FER2013 labels": data[f"y_{part}"].astype(int)}
    if args.ferplus:
        majority = fer2013.ferplus_majority(fer2013.load_ferplus(args.ferplus, data)[f"ferplus_{part}"])
        labels["FER+ majority labels"] = majority
    proba = {"baseline": model_probabilities(args.baseline, data[f"x_{part}"], args.tta),
             "candidate": model_probabilities(args.candidate, data[f"x_{part}"], args.tta)}
    proba["ensemble"] = (proba["baseline"] + proba["candidate"]) / 2
    for what, y in labels.items():
        kept = y >= 0
        print(f"{args.split}, {what}, {kept.sum():,} images, --tta {args.tta}")
        right = {name: p[kept].argmax(1) == y[kept] for name, p in proba.items()}
        for name, path in (("baseline", args.baseline), ("candidate", args.candidate), ("ensemble", "mean of both")):
            f = calibration.class_figures(proba[name][kept], y[kept])
            print(f"  {name:<10} {f['accuracy']:.2%}  macro recall {f['macro_recall']:.2%}  Disgust recall "
                  f"{f['disgust_recall']:.2%}  ECE {f['ece']:.4f}  ({path})")
        for name in ("candidate", "ensemble"):
            p, only_new, only_base = mcnemar_p(right[name], right["baseline"])
            print(f"  {name} vs baseline: {100 * (right[name].mean() - right['baseline'].mean()):+.2f} points; "
                  f"right only in {name} {only_new}, only in baseline {only_base}; McNemar p = {p:.3f}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
