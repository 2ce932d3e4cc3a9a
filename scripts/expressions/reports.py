"""What a trained model's folder holds besides the model: metrics.json (test figures per
test-time augmentation mode and per split), history.csv, learning curves, confusion
matrix and the architecture text. One function writes them all, for train.py at the end
of a run, ensemble.py for an ensemble, and report.py on a finished model."""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import ROOT, UserError, machine_line, plots
from .model import DEFAULT_TTA, TTA_MODES, classification_report, model_path, predict_in_batches
from .outputs import write_json, write_text

NOTES_DIR = Path(__file__).resolve().parent / "notes"
# train.py settings that change where a run reads and writes or how it computes, not what it
# learns: two runs that differ only in these (and --include-validation) are twins.
NOT_RECIPE = ("include_validation", "data_dir", "out", "model_name", "mixed_precision", "strategy")


def artifact(out: Path, model_name: str, filename: str) -> Path:
    """Where a model's report goes: results/model/learning_curves.png for our own model,
    results/model/pre_trained_model_learning_curves.png for another."""
    return Path(out) / (filename if model_name == "my_own_model" else f"{model_name}_{filename}")


def trained_on_validation(model_file: Path) -> bool:
    """Whether the run (or ensemble) recorded beside model_file trained on the validation
    rows (train.py --include-validation); a model with no record is taken not to have."""
    model_file = Path(model_file)
    try:
        record = json.loads(artifact(model_file.parent, model_file.stem, "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(record.get("trained_on_validation"))


def require_held_out(name, why):
    """One clean error instead of figures on the validation rows for a model that trained on
    them (the committed model does): they would flatter it."""
    if trained_on_validation(model_path(name)):
        raise UserError(f"{model_path(name)} trained on the validation rows (its metrics.json says so): {why}")


def evaluate(model, data):
    """Test figures of every test-time augmentation mode, printed and returned."""
    figures = {}
    for mode in TTA_MODES:
        proba = predict_in_batches(model, data["x_test"], mode)
        rep = classification_report(data["y_test"].astype(int), proba.argmax(1), data["usage_test"])
        figures[f"test_tta_{mode}"] = rep
        print(f"test accuracy (test-time augmentation: {mode}): {rep['accuracy']:.2%} "
              f"(PublicTest {rep['accuracy_PublicTest']:.2%}, PrivateTest {rep['accuracy_PrivateTest']:.2%})",
              flush=True)
    return figures


def write_reports(model, metrics, history, data, out, model_name, evaluate_test=True):
    """Write every report of a trained model into `out`. metrics: the run's record (kept
    epoch, validation accuracy, batch-norm pass, wall time, config, machine), or an
    ensemble's ("members": each member's record; history None: its learning curves are its
    members', see members_learning_curves); the test figures are added to it when
    evaluate_test is set (they need data["x_test"])."""
    if evaluate_test:
        metrics.update(evaluate(model, data))
        best = metrics[f"test_tta_{DEFAULT_TTA}"]
        plots.confusion_matrix(best["confusion_matrix"], artifact(out, model_name, "confusion_matrix.png"),
                               f"test set ({best['n']:,} images), {DEFAULT_TTA} averaging: {best['accuracy']:.1%}")
    if history is not None:
        plots.learning_curves(history, metrics["kept_epoch"], artifact(out, model_name, "learning_curves.png"),
                              metrics.get("batch_norm_pass"), metrics.get("trained_on_validation", False))
        write_text(artifact(out, model_name, "history.csv"), history.to_csv(index=False))
    if "members" in metrics:
        members_learning_curves(metrics["members"], artifact(out, model_name, "learning_curves.png"))
    write_json(artifact(out, model_name, "metrics.json"), metrics)
    write_text(Path(out) / f"{model_name}_architecture.txt", architecture_text(model, metrics))


def member_file(member) -> Path:
    """A member's model file as the ensemble recorded it (a relative path is the repository's)."""
    path = Path(member["model"])
    return path if path.is_absolute() else ROOT / path


def held_out_twin(model_file: Path, record):
    """The run beside model_file with the same recipe and seed that held the validation rows
    out: (its name, its record), or None. A refit (train.py --include-validation) keeps its
    last epoch; its twin's curves show where validation stopped improving."""
    recipe = {k: v for k, v in record.get("config", {}).items() if k not in NOT_RECIPE}
    found = []
    for path in sorted(Path(model_file).parent.glob("*metrics.json")):
        if path.name != "metrics.json" and not path.name.endswith("_metrics.json"):
            continue
        name = "my_own_model" if path.name == "metrics.json" else path.name[:-len("_metrics.json")]
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        config = other.get("config") if isinstance(other, dict) else None
        if (isinstance(config, dict) and not other.get("trained_on_validation")
                and {k: v for k, v in config.items() if k not in NOT_RECIPE} == recipe):
            found.append((name, other))
    return found[0] if len(found) == 1 else None


def members_learning_curves(members, path):
    """An ensemble's learning curves: each member's, or for a member that trained on the
    validation rows (whose curves cannot show overfitting) its held-out twin's, the kept
    epoch marked. Written to path; returns the runs drawn, or None (and says why) when a
    member's curves are not found beside it."""
    import pandas as pd
    runs = []
    for member in members:
        model_file = member_file(member)
        name, record = model_file.stem, member
        if member.get("trained_on_validation"):
            twin = held_out_twin(model_file, member)
            if twin is None:
                print(f"no learning curves for the ensemble: {model_file} trained on the validation rows and no "
                      "single run beside it has its recipe and seed with them held out")
                return None
            name, record = twin
        try:
            history = pd.read_csv(artifact(model_file.parent, name, "history.csv"))
        except (OSError, ValueError) as err:
            print(f"no learning curves for the ensemble: {err.__class__.__name__} reading the history of {name}")
            return None
        title = name if name == model_file.stem else f"{name}, held-out twin of {model_file.stem}"
        runs.append({"name": name, "title": title, "history": history, "kept_epoch": record["kept_epoch"],
                     "batch_norm": record.get("batch_norm_pass")})
    twins = any(run["name"] != member_file(m).stem for run, m in zip(runs, members))
    plots.runs_learning_curves(runs, path, f"The ensemble's {len(runs)} networks" + (
        "\nA network refit on the validation rows keeps its last epoch; shown instead is its twin, the same\n"
        "recipe and seed with validation held out, and the epoch it kept (the best on validation)" if twins else ""))
    return runs


def architecture_text(model, metrics):
    """Keras' summary, why the network looks as it does, and the run that produced it."""
    lines = []
    os.environ["COLUMNS"] = "110"  # rich, which draws the table, otherwise cuts it at 80 columns
    model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=100)
    mobilenet = metrics.get("config", {}).get("backbone") == "mobilenet"
    notes = (NOTES_DIR / ("mobilenet.txt" if mobilenet else "cnn.txt")).read_text()
    if "members" in metrics:
        run = [f"An ensemble: the mean of {len(metrics['members'])} networks' probabilities, made by "
               f"{metrics['command']}", "-" * 60]
        for k, member in enumerate(metrics["members"], start=1):
            run += [f"member_{k}: {member['model']}, trained by {member['command']}"] + [
                "  " + line for line in run_lines(member)]
        run += test_lines(metrics)
    else:
        run = run_lines(metrics) + test_lines(metrics)
        run.insert(0, f"Run that produced this model: {metrics.get('command', 'python scripts/train.py')}")
        run.insert(1, "-" * 60)
    tail = "" if mobilenet else ("\nThe variants tried before this one, with their measured figures, are in "
                                 "iterations.md beside this file.\n")
    return "Model summary\n-------------\n" + "\n".join(lines) + "\n\n" + notes + "\n" + "\n".join(run) + "\n" + tail


def run_lines(metrics):
    """How one training run went: epochs, kept epoch, batch-norm pass, wall time."""
    bn = metrics.get("batch_norm_pass")
    if metrics.get("trained_on_validation"):
        run = [f"epochs run: {metrics['epochs_run']}, kept epoch: {metrics['kept_epoch']} (the last: the validation "
               "rows were trained on, so nothing was held out to choose another)"]
    else:
        best_epoch_val = bn["val_accuracy_moving_averages"] if bn else metrics["val_accuracy"]
        run = [f"epochs run: {metrics['epochs_run']}, kept epoch: {metrics['kept_epoch']} "
               f"(best validation accuracy {best_epoch_val:.2%})"]
    if bn:
        run.append(f"batch-norm pass (statistics recomputed on the un-augmented training images): validation "
                   f"accuracy {bn['val_accuracy_moving_averages']:.2%} -> {bn['val_accuracy_recomputed']:.2%}, "
                   f"{'kept' if bn['kept'] else 'not kept'}")
    run.append(f"training wall time: {metrics['train_wall_minutes']:.1f} min on {machine_line(metrics['machine'])}")
    return run


def test_lines(metrics):
    run = []
    for mode in TTA_MODES:
        m = metrics.get(f"test_tta_{mode}")
        if m:
            run.append(f"test accuracy, test-time augmentation {mode}: {m['accuracy']:.2%} on {m['n']:,} images "
                       f"(PublicTest {m['accuracy_PublicTest']:.2%}, PrivateTest {m['accuracy_PrivateTest']:.2%}), "
                       f"macro-F1 {m['macro_f1']:.3f}")
    return run


def finished_run(out: Path, model_name: str, config: dict):
    """The kept validation accuracy of a run already finished in `out` with exactly this
    config, all its epochs run, and the very model file its metrics.json records (a run of
    other options killed between writing the two, or a model changed since, does not
    count), else None: lets --folds resume by fold."""
    from .model import file_sha256
    model = Path(out) / f"{model_name}.pkl"
    try:
        record = json.loads(artifact(out, model_name, "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("config") != config or (Path(out) / f"{model_name}_run").exists() \
            or record.get("epochs_run") != config.get("epochs") or not isinstance(record.get("val_accuracy"), float):
        return None
    try:
        same_model = record.get("model_sha256") == file_sha256(model)
    except OSError:
        return None
    return record["val_accuracy"] if same_model else None


def fold_summary(out: Path, names, held_out, data, model_name):
    """--folds' report: each fold's accuracy on its held-out rows, their mean and spread,
    then each fold's network and their ensemble (the mean of their probabilities) on the
    validation split, which none of them trained on. Written to MODEL_folds.json; returns
    the printed lines."""
    import numpy as np
    from .model import load_model
    y = data["y_val"].astype(int)
    proba = [predict_in_batches(load_model(str(Path(out) / f"{name}.pkl")), data["x_val"], DEFAULT_TTA)
             for name in names]
    members = [float(np.mean(p.argmax(1) == y)) for p in proba]
    ensemble = float(np.mean(np.mean(proba, axis=0).argmax(1) == y))
    record = {"folds": len(names), "models": [f"{name}.pkl" for name in names],
              "held_out_accuracy": held_out, "held_out_mean": float(np.mean(held_out)),
              "held_out_std": float(np.std(held_out, ddof=1)), "tta": DEFAULT_TTA,
              "validation_accuracy": members, "ensemble_validation_accuracy": ensemble}
    write_json(Path(out) / f"{model_name}_folds.json", record)
    lines = [f"fold {k + 1}: {acc:.2%} on its held-out rows (single pass), {val:.2%} on the validation split "
             f"({DEFAULT_TTA})" for k, (acc, val) in enumerate(zip(held_out, members))]
    lines.append(f"{len(names)} folds: held-out accuracy {record['held_out_mean']:.2%} mean, "
                 f"{record['held_out_std']:.2%} standard deviation; ensemble of the {len(names)} on the validation "
                 f"split ({len(y):,} images, {DEFAULT_TTA}): {ensemble:.2%}")
    return "\n".join(lines)
