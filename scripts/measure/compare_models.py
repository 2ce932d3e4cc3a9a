"""Compare two models on the validation split, paired image by image, and their ensemble.

Validation has 2,872 images: one standard error at 69 % is 0.86 points, so two accuracies
alone cannot tell a lever from luck. The paired test (McNemar's exact test on the images
where exactly one of the two models is right) can: it is how iterations.md decides.

    python scripts/measure/compare_models.py results/model/runs/run10_seed2.pkl
    python scripts/measure/compare_models.py A.pkl --baseline B.pkl --tta none

Prints each model's validation accuracy, the ensemble's (the mean of the two models'
probabilities), and McNemar's p for A against the baseline and for the ensemble against
the baseline. Test images are not used.
"""
import argparse
import sys
from math import comb
from pathlib import Path


from expressions import DATA_DIR, ROOT, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate", help="the model to compare (a .pkl path, or own / pre_trained)")
    # Defaults shown relative to the project: its absolute path is this machine's, not the tool's.
    p.add_argument("--baseline", default=nets.HELD_OUT_MODEL,
                   help=f"the model it is compared with (default: {nets.HELD_OUT_MODEL.relative_to(ROOT)} in the "
                        "project, one network of the committed recipe; the committed model trained on the "
                        "validation rows, so it cannot be judged there)")
    nets.add_tta_option(p)
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


def main(argv=None):
    args = parse_args(argv)
    for name in (args.candidate, args.baseline):
        reports.require_held_out(name, "a comparison on them would flatter it; compare the same recipe "
                                       "trained without them")
    data = fer2013.load_prepared(args.data_dir)
    x, y = data["x_val"], data["y_val"].astype(int)
    p_base = nets.predict_in_batches(nets.load_model(args.baseline), x, args.tta)
    p_cand = nets.predict_in_batches(nets.load_model(args.candidate), x, args.tta)
    right = {"baseline": p_base.argmax(1) == y, "candidate": p_cand.argmax(1) == y,
             "ensemble": ((p_base + p_cand) / 2).argmax(1) == y}
    print(f"validation, {len(y):,} images, --tta {args.tta}")
    for name, path in (("baseline", args.baseline), ("candidate", args.candidate), ("ensemble", "mean of both")):
        print(f"  {name:<10} {right[name].mean():.2%}  ({path})")
    for name in ("candidate", "ensemble"):
        p, only_new, only_base = mcnemar_p(right[name], right["baseline"])
        print(f"  {name} vs baseline: {100 * (right[name].mean() - right['baseline'].mean()):+.2f} points; "
              f"right only in {name} {only_new}, only in baseline {only_base}; McNemar p = {p:.3f}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
