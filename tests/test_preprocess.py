"""The FER2013 data pipeline: input layouts, validation of every row, the split, the CLI."""
import gzip
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, assert_clean_error, fake_rows, needs_shared, run_script, write_kaggle_csv, full
from expressions import UserError
from expressions import data as fer2013

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


def prepare(tmp_path, *extra):
    return run_script("preprocess.py", "--data-dir", tmp_path / "out", "--plot", tmp_path / "dist.png", *extra)


@pytest.mark.parametrize("name", ["fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv"])
def test_kaggle_layouts(tmp_path, name):
    src = tmp_path / "in"
    src.mkdir()
    rows = write_kaggle_csv(src / name)
    result = prepare(tmp_path, "--source", src)
    assert result.returncode == 0, result.stderr
    train = pd.read_csv(tmp_path / "out" / "train.csv")
    test = pd.read_csv(tmp_path / "out" / "test.csv")
    assert list(train.columns) == ["emotion", "pixels"] and len(train) == 70
    assert list(test.columns) == ["emotion", "pixels", "Usage"] and len(test) == 28
    assert train.pixels[0] == rows[0][1] and test.pixels[0] == rows[70][1]
    assert (tmp_path / "dist.png").stat().st_size > 0


@pytest.mark.parametrize("test_name", ["test_with_emotions.csv", "test.csv.gz"])
def test_course_layout(tmp_path, test_name):
    src = tmp_path / "in"
    src.mkdir()
    train_rows, test_rows = fake_rows(70, "Training"), fake_rows(14, "PublicTest", 1)
    (src / "train.csv").write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, _ in train_rows))
    text = "emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, _ in test_rows)
    if test_name.endswith(".gz"):
        with gzip.open(src / test_name, "wt") as f:
            f.write(text)
    else:
        (src / test_name).write_text(text)
    result = prepare(tmp_path, "--source", src)
    assert result.returncode == 0, result.stderr
    data = fer2013.load_prepared(tmp_path / "out")
    assert len(data["x_train"]) + len(data["x_val"]) == 70 and len(data["x_test"]) == 14
    # Without a Usage column the first half of the test file is PublicTest, the rest PrivateTest.
    assert list(data["usage_test"]) == ["PublicTest"] * 7 + ["PrivateTest"] * 7


def test_challenge_zip(tmp_path):
    csv = tmp_path / "fer2013.csv"
    write_kaggle_csv(csv)
    with zipfile.ZipFile(tmp_path / "challenge.zip", "w") as z:
        z.write(csv, "fer2013/fer2013.csv")
    result = prepare(tmp_path, "--source", tmp_path / "challenge.zip")
    assert result.returncode == 0, result.stderr
    assert len(fer2013.load_prepared(tmp_path / "out")["x_test"]) == 28


def test_rerun_is_a_noop(tmp_path):
    write_kaggle_csv(tmp_path / "fer2013.csv")
    assert prepare(tmp_path, "--source", tmp_path / "fer2013.csv").returncode == 0
    mtime = (tmp_path / "out" / "train.csv").stat().st_mtime_ns
    again = prepare(tmp_path, "--source", tmp_path / "fer2013.csv")
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (tmp_path / "out" / "train.csv").stat().st_mtime_ns == mtime


def replace_line(path, line_no, new):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new
    path.write_text("\n".join(lines) + "\n")


PIX = " ".join(["7"] * 2304)


@pytest.mark.parametrize("bad_line, message", [
    (f"3,{' '.join(['7'] * 2303)},Training", "2303 pixel values instead of 2304"),
    (f"3,{PIX[:-1]}x,Training", "non-integer pixel value"),
    (f"3,{PIX[:-1]}256,Training", "pixel value above 255"),
    (f"7,{PIX},Training", "label '7' is not 0..6"),
    (f"-1,{PIX},Training", "label '-1' is not 0..6"),
    (f"3,{PIX},Validation", "unknown Usage 'Validation'"),
])
def test_bad_rows_are_reported_with_line_numbers(tmp_path, bad_line, message):
    csv = tmp_path / "fer2013.csv"
    write_kaggle_csv(csv)
    replace_line(csv, 5, bad_line)
    result = prepare(tmp_path, "--source", csv)
    assert_clean_error(result, "line 5", message, "--skip-bad-rows")
    assert not (tmp_path / "out" / "train.csv").exists()
    skipped = prepare(tmp_path, "--source", csv, "--skip-bad-rows")
    assert skipped.returncode == 0, skipped.stderr
    assert "dropped 1 bad row(s)" in skipped.stderr
    data = fer2013.load_prepared(tmp_path / "out")
    assert len(data["x_train"]) + len(data["x_val"]) + len(data["x_test"]) == 97


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("emotion,pixels,Usage\n" + '3,"1 2 3\n', "not a valid CSV"),
    ("label,image\n3,1 2 3\n", "missing column(s) emotion, pixels, Usage"),
    ("\x00\x01\x02garbage", "missing column(s) emotion, pixels, Usage"),
])
def test_broken_files(tmp_path, content, message):
    csv = tmp_path / "fer2013.csv"
    csv.write_text(content)
    assert_clean_error(prepare(tmp_path, "--source", csv), message)


def test_truncated_gzip_and_missing_source(tmp_path):
    gz = tmp_path / "fer2013.csv.gz"
    write_kaggle_csv(gz)
    gz.write_bytes(gz.read_bytes()[:2000])
    assert_clean_error(prepare(tmp_path, "--source", gz), "cannot read")
    assert_clean_error(prepare(tmp_path, "--source", tmp_path / "nope.csv"), "does not exist")


def test_failed_run_keeps_existing_outputs(tmp_path):
    good = tmp_path / "fer2013.csv"
    write_kaggle_csv(good)
    assert prepare(tmp_path, "--source", good).returncode == 0
    before = (tmp_path / "out" / "train.csv").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels,Usage\n9,1 2,Training\n")
    assert_clean_error(prepare(tmp_path, "--source", bad))
    assert (tmp_path / "out" / "train.csv").read_bytes() == before


def test_no_data_anywhere_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match="kaggle.com.*") as err:
        fer2013.find_fer2013_source(tmp_path / "empty", None)
    assert str(tmp_path / "empty") in str(err.value) and "--source" in str(err.value)


def test_validation_split_is_stratified_and_stable():
    y = np.repeat(np.arange(7), [400, 40, 400, 700, 480, 310, 500])
    a = fer2013.stratified_validation_split(y, 0.1, 42)
    b = fer2013.stratified_validation_split(y, 0.1, 42)
    assert (a == b).all()
    assert np.array_equal(np.bincount(y[a]), np.round(np.bincount(y) * 0.1).astype(int))
    assert not (a == fer2013.stratified_validation_split(y, 0.1, 43)).all()


@needs_shared
def test_full_dataset_counts(prepared_data):
    data = fer2013.load_prepared(prepared_data)
    assert len(data["x_train"]) + len(data["x_val"]) == 28709
    assert len(data["x_test"]) == 7178
    assert (data["usage_test"] == "PublicTest").sum() == 3589
    assert (data["usage_test"] == "PrivateTest").sum() == 3589
    train_counts = np.bincount(np.concatenate([data["y_train"], data["y_val"]]), minlength=7)
    assert train_counts.tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert np.bincount(data["y_test"], minlength=7).tolist() == [958, 111, 1024, 1774, 1247, 831, 1233]
    # The validation rows are Training rows (never test rows), about 10 % of every class.
    assert 2800 < len(data["x_val"]) < 2950
    train_csv = pd.read_csv(prepared_data / "train.csv", usecols=["emotion"])
    val_rows = data["val_rows_in_train_csv"]
    assert np.array_equal(train_csv.emotion.to_numpy()[val_rows], data["y_val"])
    test_csv = pd.read_csv(prepared_data / "test.csv", usecols=["emotion", "Usage"])
    assert len(test_csv) == 7178 and set(test_csv.Usage) == {"PublicTest", "PrivateTest"}


@needs_shared
def test_split_is_the_one_the_committed_model_was_selected_on(prepared_data):
    # The validation rows (indices into train.csv) of every model so far: a change of the
    # split would silently mix models selected on different images.
    import hashlib
    rows = fer2013.load_prepared(prepared_data)["val_rows_in_train_csv"]
    assert len(rows) == 2872
    assert hashlib.sha256(rows.astype("int64").tobytes()).hexdigest()[:16] == VAL_ROWS_SHA256


def test_scratch_data_dir_leaves_the_committed_figure_alone(tmp_path):
    committed = ROOT / "results" / "class_distribution.png"
    before = committed.read_bytes()
    write_kaggle_csv(tmp_path / "fer2013.csv")
    result = run_script("preprocess.py", "--source", tmp_path / "fer2013.csv", "--data-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "class_distribution.png").stat().st_size > 10_000
    assert committed.read_bytes() == before


def test_unwritable_data_dir_or_plot(tmp_path):
    write_kaggle_csv(tmp_path / "fer2013.csv")
    (tmp_path / "file").write_text("")
    for extra in (["--data-dir", tmp_path / "file"], ["--data-dir", tmp_path / "o", "--plot", "/proc/x.png"]):
        result = run_script("preprocess.py", "--source", tmp_path / "fer2013.csv", *extra)
        assert_clean_error(result, "cannot write")
    assert not (tmp_path / "o" / "train.csv").exists()  # refused before any work


VAL_ROWS_SHA256 = "5e0d79b8fbc56a6c"  # preprocess.py defaults: --val-fraction 0.1 --seed 42
