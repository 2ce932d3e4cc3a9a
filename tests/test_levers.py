"""Issue 40's model levers: the FER+ votes lined up with FER2013's rows (they score models;
training toward them was measured not to help), k-fold splits, logit adjustment folded into
a model; and (full tier) one tiny train.py run by folds, resumed by fold, then scored on the
FER+ majority labels."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, TINY, assert_clean_error, full, needs_shared, run_script
from expressions import EMOTIONS, UserError
from expressions import calibration
from expressions import data as fer2013
from expressions import model as nets

VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]


def fake_prepared(n_train=6, val_rows=(1, 4), usage_test=("PublicTest", "PublicTest", "PrivateTest")):
    """A prepared-data dict whose pixels say which fer2013.csv row they came from."""
    n_training = n_train + len(val_rows)
    is_val = np.isin(np.arange(n_training), val_rows)
    rows = np.arange(n_training)
    return {"x_train": rows[~is_val], "y_train": rows[~is_val] % 7, "x_val": rows[is_val],
            "y_val": rows[is_val] % 7, "x_test": np.arange(len(usage_test)) + n_training,
            "usage_test": np.array(usage_test), "val_rows_in_train_csv": np.array(val_rows)}


def write_votes(path, usages, blank=()):
    """FER+-format votes where row r has r % 9 + 1 votes for anger and 1 for neutral."""
    rows = []
    for r, usage in enumerate(usages):
        votes = dict.fromkeys(VOTE_COLUMNS, 0)
        votes["anger"], votes["neutral"] = r % 9 + 1, 1
        rows.append({"Usage": usage, "Image name": "" if r in blank else f"fer{r:07d}.png", **votes})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ferplus_votes_follow_the_rows_into_train_validation_and_test(tmp_path):
    data = fake_prepared()
    path = write_votes(tmp_path / "votes.csv", ["Training"] * 8 + ["PublicTest"] * 2 + ["PrivateTest"], blank=(2,))
    out = fer2013.load_ferplus(path, data)
    angry, neutral = EMOTIONS.index("Angry"), EMOTIONS.index("Neutral")
    # Each split's votes belong to the same fer2013.csv rows as its pixels.
    for split in ("train", "val", "test"):
        rows = out[f"x_{split}"]
        expected = np.zeros((len(rows), 7), np.float32)
        expected[:, angry], expected[:, neutral] = rows % 9 + 1, 1
        expected[rows == 2] = 0  # FER+ blanked its name: not a face
        np.testing.assert_array_equal(out[f"ferplus_{split}"], expected)
    assert list(fer2013.ferplus_majority(out["ferplus_train"])) == [angry, -1, angry, angry, angry, angry]


def test_ferplus_votes_that_do_not_line_up_are_one_line(tmp_path):
    data = fake_prepared()
    short = write_votes(tmp_path / "short.csv", ["Training"] * 7 + ["PublicTest"] * 2 + ["PrivateTest"])
    with pytest.raises(UserError, match="does not line up"):
        fer2013.load_ferplus(short, data)
    swapped = write_votes(tmp_path / "swapped.csv", ["Training"] * 8 + ["PrivateTest"] + ["PublicTest"] * 2)
    with pytest.raises(UserError, match="does not line up"):
        fer2013.load_ferplus(swapped, data)
    (tmp_path / "other.csv").write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(UserError, match="not FER\\+'s fer2013new.csv"):
        fer2013.load_ferplus(tmp_path / "other.csv", data)
    with pytest.raises(UserError, match="cannot read"):
        fer2013.load_ferplus(tmp_path / "missing.csv", data)


@pytest.mark.parametrize("value", ["three", "-1", "inf", "1e40", "11"])
def test_ferplus_votes_that_are_not_counts_are_one_line(tmp_path, value):
    path = write_votes(tmp_path / "votes.csv", ["Training"] * 8 + ["PublicTest"] * 2 + ["PrivateTest"])
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[3, "disgust"] = value
    table.to_csv(path, index=False)
    with pytest.raises(UserError, match="row 5: disgust is '.+', not a vote count from 0 to 10"):
        fer2013.load_ferplus(path, fake_prepared())


def test_k_folds_deal_every_class_evenly_and_the_splits_partition_training():
    y = np.repeat(np.arange(7), [50, 7, 23, 90, 31, 12, 40])
    fold = fer2013.k_folds(y, 5, seed=3)
    for label in range(7):
        counts = np.bincount(fold[y == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    data = {"x_train": np.arange(len(y)), "y_train": y, "x_val": np.array([-1]), "y_val": np.array([0])}
    seen = []
    for k in range(5):
        split = fer2013.fold_split(data, fold, k)
        assert not set(split["x_train"]) & set(split["x_val"])
        seen.extend(split["x_val"])
    assert sorted(seen) == list(range(len(y)))
    assert not np.array_equal(fold, fer2013.k_folds(y, 5, seed=4))


def test_folded_logit_adjustment_computes_what_was_measured():
    members = [nets.build_cnn(8, 0.0), nets.build_cnn(8, 0.0)]
    ensemble = nets.build_ensemble(members)
    x = np.random.default_rng(1).uniform(0, 255, (16, 48, 48, 1)).astype("float32")
    log_prior = np.log(np.array([0.14, 0.015, 0.14, 0.25, 0.17, 0.11, 0.175]))
    views = calibration.view_log_probabilities(ensemble, x, "flip")
    expected = calibration.with_prior_adjustment(views, log_prior, 0.6)
    calibration.fold_prior_adjustment(ensemble, log_prior, 0.6)
    np.testing.assert_allclose(nets.predict_in_batches(ensemble, x, "flip"), expected, atol=1e-5)
    # Rare classes gain: Disgust's probability rises on every image.
    assert (expected[:, 1] > calibration.with_temperature(views, 1.0)[:, 1]).all()


def test_fit_to_model_recovers_a_known_adjustment_and_temperature():
    rng = np.random.default_rng(2)
    view_log_p = np.log(rng.dirichlet(np.ones(7) * 0.7, size=(2, 1, 400)))
    log_prior = np.log(np.array([0.14, 0.015, 0.14, 0.25, 0.17, 0.11, 0.175]))
    target = calibration.with_temperature(view_log_p - 0.4 * log_prior, 0.8)
    tau, t = calibration.fit_to_model(view_log_p, target, log_prior)
    assert tau == pytest.approx(0.4, abs=0.02) and t == pytest.approx(0.8, rel=0.02)


@full
@needs_shared
def test_the_levers_in_one_tiny_run_resumed_by_fold(prepared_data, tmp_path):
    votes = SHARED / "data" / "fer2013" / "fer2013new.csv"
    command = ["train.py", *TINY, "--epochs", "1", "--folds", "2", "--data-dir", prepared_data,
               "--out", tmp_path, "--no-evaluate"]
    first = run_script(*command)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "fold 2/2: training on" in first.stdout
    summary = json.loads((tmp_path / "my_own_model_folds.json").read_text())
    assert summary["folds"] == 2 and summary["held_out_mean"] == pytest.approx(np.mean(summary["held_out_accuracy"]))
    for k in (1, 2):
        metrics = json.loads((tmp_path / f"my_own_model_fold{k}_metrics.json").read_text())
        assert metrics["config"]["fold"] == k
        assert metrics["val_accuracy"] == summary["held_out_accuracy"][k - 1]
    # The ensemble figure is the two saved networks' on the validation split.
    data = fer2013.subset(fer2013.load_prepared(prepared_data), 384, seed=1)
    proba = [nets.predict_in_batches(nets.load_model(tmp_path / f"my_own_model_fold{k}.pkl"), data["x_val"])
             for k in (1, 2)]
    assert summary["ensemble_validation_accuracy"] == pytest.approx(
        np.mean(np.mean(proba, 0).argmax(1) == data["y_val"]))
    # Run again: both folds are kept, nothing is trained.
    again = run_script(*command)
    assert again.returncode == 0 and again.stdout.count("finished before with these options") == 2
    assert "epoch   1" not in again.stdout
    # A fold whose model file is not the one its record names is trained again; the other is kept.
    (tmp_path / "my_own_model_fold1.pkl").write_bytes((tmp_path / "my_own_model_fold2.pkl").read_bytes())
    # --only-fold 1 trains it alone (folds side by side in processes); the next full command
    # keeps both and prints the summary.
    redone = run_script(*command, "--only-fold", "1")
    assert redone.returncode == 0 and "fold 1/2: training on" in redone.stdout, redone.stderr[-2000:]
    assert "fold 2/2" not in redone.stdout and "held-out accuracy" not in redone.stdout
    summed = run_script(*command)
    assert summed.stdout.count("finished before with these options") == 2 and "held-out accuracy" in summed.stdout
    refused = run_script("train.py", "--folds", "1", "--out", tmp_path / "bad")
    assert refused.returncode == 2 and "--folds must be 2 to 10" in refused.stderr
    # The two networks scored on the test images' FER2013 and FER+ majority labels, paired.
    fold1, fold2 = tmp_path / "my_own_model_fold1.pkl", tmp_path / "my_own_model_fold2.pkl"
    scored = run_script("measure/compare_models.py", fold1, "--baseline", fold2, "--tta", "none", "--split", "test",
                        "--ferplus", votes, "--data-dir", prepared_data)
    assert scored.returncode == 0, scored.stderr[-2000:]
    headers = [line for line in scored.stdout.splitlines() if line.startswith("test, ")]
    assert headers == ["test, FER2013 labels, 7,178 images, --tta none",
                       "test, FER+ majority labels, 7,152 images, --tta none"]
    assert_clean_error(run_script("measure/compare_models.py", fold1, "--baseline", fold2, "--ferplus",
                                  tmp_path / "none.csv", "--data-dir", prepared_data), "cannot read the FER+ votes")
    # Logit adjustment measured on the two networks, then folded by calibrate.py.
    swept = run_script("measure/logit_adjustment.py", fold1, fold2, "--tta", "none", "--json", tmp_path / "la.json",
                       "--data-dir", prepared_data)
    assert swept.returncode == 0, swept.stderr[-2000:]
    record = json.loads((tmp_path / "la.json").read_text())
    assert [row["tau"] for row in record["table"]] == pytest.approx(np.arange(0, 1.01, 0.1))
    assert len(record["two_fold_check"]) == 2 and f"tau = {record['tau']:.1f}" in swept.stdout
    folded = run_script("build/calibrate.py", "--model", fold1, "--prior-adjustment", "0.5", "--dry-run", "--out",
                        tmp_path, "--data-dir", prepared_data)
    assert folded.returncode == 0 and "tau = 0.5 x log prior" in folded.stdout, folded.stderr[-2000:]
    matched = run_script("build/calibrate.py", "--model", fold2, "--match", fold1, "--dry-run", "--out", tmp_path,
                         "--data-dir", prepared_data)
    assert matched.returncode == 0 and "fitting the logit adjustment and the temperature" in matched.stdout
    assert json.loads((tmp_path / "calibration.json").read_text())["fitted_on"].startswith("validation, toward")
    refused = run_script("build/calibrate.py", "--match", fold1, "--temperature", "1", "--out", tmp_path)
    assert refused.returncode == 2 and "--match fits the adjustment and T" in refused.stderr
