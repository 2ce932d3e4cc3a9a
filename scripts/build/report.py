"""Rewrite the reports of a finished model: test figures (metrics.json), confusion matrix,
learning curves, history.csv and the architecture text, the same files train.py writes
at the end of a run (or ensemble.py, for an ensemble: no history of its own; its learning
curves are its members', and a member refit on the validation rows is shown by its
held-out twin, the run of the same recipe and seed beside it). Reads the model and the
run's metrics.json and history.csv from the model's folder.

    python scripts/build/report.py                  # the committed model, results/model/
    python scripts/build/report.py --no-evaluate    # keep its test figures: no evaluation on test
    python scripts/build/report.py --model results/model_w24/my_own_model.pkl
"""
import argparse
import json
import sys
from pathlib import Path

from expressions import DATA_DIR, UserError, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports
from expressions.outputs import check_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    nets.add_model_option(p)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="prepared data (default: %(default)s)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="keep the test figures already in metrics.json; rewrite the other reports")
    return p.parse_args(argv)


def main(argv=None):
    import pandas as pd
    args = parse_args(argv)
    path = nets.model_path(args.model)
    out, name = check_folder(path.parent, "report folder"), path.stem
    model = nets.load_model(path)
    try:
        metrics = json.loads(reports.artifact(out, name, "metrics.json").read_text())
        history = None if "members" in metrics else pd.read_csv(reports.artifact(out, name, "history.csv"))
    except (OSError, ValueError) as err:
        raise UserError(f"the reports need the metrics.json and history.csv that train.py (or ensemble.py) wrote beside {path}: "
                        f"{err}") from None
    data = fer2013.load_prepared(args.data_dir) if not args.no_evaluate else None
    reports.write_reports(model, metrics, history, data, out, name, evaluate_test=not args.no_evaluate)
    print(f"wrote the reports of {path} in {out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
