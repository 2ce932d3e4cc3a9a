"""FER2013: reading any of its layouts, validating every row, the validation split, and
the prepared arrays that preprocess.py writes and every other stage reads."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import DATA_DIR, EMOTIONS, IMAGE_SIZE, UserError

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
USAGES = ("Training", "PublicTest", "PrivateTest")
PREPARED_NPZ = "fer2013_prepared.npz"  # under the data directory
KAGGLE_URL = ("https://www.kaggle.com/c/challenges-in-representation-learning-"
              "facial-expression-recognition-challenge/data")


def read_csv_text(path: Path) -> str:
    """Text of a .csv or .csv.gz file; a clear error if it is not readable text."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise UserError(f"cannot read {path}: {err.__class__.__name__}: {err}") from None


def parse_csv_table(text: str, name: str):
    """Parse CSV text into a DataFrame with stripped column names."""
    import pandas as pd
    if not text.strip():
        raise UserError(f"{name} is empty")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several parser error types
        raise UserError(f"{name} is not a valid CSV file: {str(err).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


_PIXELS_RE = re.compile(r"\d{1,3}(?: \d{1,3}){%d}" % (N_PIXELS - 1))


def validate_rows(df, name: str, skip_bad_rows: bool = False, need_usage: bool = True, bad_rows_hint: bool = True):
    """Check every row (2,304 integer pixels 0..255, label 0..6, known Usage).

    Returns (pixels uint8 [n,48,48], labels int8 [n], usage array of str, n_dropped).
    Bad rows are reported with their line number in the file (header = line 1); the
    error suggests --skip-bad-rows only where the calling script has it (bad_rows_hint).
    """
    required = ["emotion", "pixels"] + (["Usage"] if need_usage else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)} "
                        f"(found {', '.join(df.columns) or 'none'}; expected emotion,pixels,Usage)")
    pixels = df["pixels"].str.strip()
    problems = {}  # line number -> reason
    # Python's re, not pandas' .str.fullmatch: with pyarrow installed (analyze.py's parquet)
    # pandas hands that to RE2, which refuses a repetition of 2,303.
    good_pixels = pixels.map(lambda row: _PIXELS_RE.fullmatch(row) is not None).astype(bool)
    for i in np.flatnonzero(~good_pixels.to_numpy()):
        tokens = pixels.iat[i].split()
        if len(tokens) != N_PIXELS:
            problems[i] = f"{len(tokens)} pixel values instead of {N_PIXELS}"
        else:
            problems[i] = "non-integer pixel value"
    labels = df["emotion"].str.strip()
    good_label = labels.isin([str(k) for k in range(len(EMOTIONS))])
    for i in np.flatnonzero(~good_label.to_numpy()):
        problems.setdefault(i, f"label {labels.iat[i]!r} is not 0..6")
    if need_usage:
        usage = df["Usage"].str.strip()
        for i in np.flatnonzero(~usage.isin(USAGES).to_numpy()):
            problems.setdefault(i, f"unknown Usage {usage.iat[i]!r}")
    else:
        usage = None
    # Range check needs parsed values: parse the rows whose syntax is fine.
    ok_syntax = good_pixels.to_numpy()
    values = np.zeros((len(df), N_PIXELS), dtype=np.int16)
    if ok_syntax.any():
        flat = np.fromstring(" ".join(pixels[ok_syntax]), dtype=np.int16, sep=" ")
        values[ok_syntax] = flat.reshape(-1, N_PIXELS)
    for i in np.flatnonzero(ok_syntax & (values.max(axis=1) > 255)):
        problems.setdefault(i, "pixel value above 255")

    if problems:
        lines = sorted(problems)
        shown = "; ".join(f"line {i + 2}: {problems[i]}" for i in lines[:5])
        more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
        if not skip_bad_rows:
            raise UserError(f"{name}: {len(lines)} bad row(s): {shown}{more}. "
                            "Fix the file" + (" or pass --skip-bad-rows to drop them" if bad_rows_hint else ""))
        print(f"warning: {name}: dropped {len(lines)} bad row(s): {shown}{more}", file=sys.stderr)
    keep = np.ones(len(df), dtype=bool)
    keep[list(problems)] = False
    if not keep.any():
        raise UserError(f"{name}: no valid rows left")
    x = values[keep].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    y = labels[keep].astype(np.int8).to_numpy()
    u = usage[keep].to_numpy().astype(str) if usage is not None else None
    return x, y, u, int((~keep).sum())


def find_fer2013_source(data_dir: Path = DATA_DIR, source: Path | None = None):
    """Where the raw data is: returns (kind, [paths]). kind is 'kaggle' (one fer2013.csv),
    'course' (train.csv + test file) or 'zip'. Looks in source if given, else in data_dir."""
    if source is not None:
        source = Path(source)
        if not source.exists():
            raise UserError(f"--source {source} does not exist")
        if source.is_dir():
            found = _find_in(source)
            if not found:
                raise UserError(f"--source {source} holds no fer2013.csv[.gz], challenge .zip, "
                                "or train.csv + test_with_emotions.csv")
            return found
        if source.suffix == ".zip":
            return "zip", [source]
        return "kaggle", [source]
    found = _find_in(data_dir)
    if found:
        return found
    raise UserError(
        f"no FER2013 data found: looked in {data_dir} for fer2013.csv[.gz], the challenge .zip, "
        f"or train.csv[.gz] + test_with_emotions.csv[.gz]/test.csv[.gz]. "
        f"Download fer2013.csv from {KAGGLE_URL} into {data_dir}, or pass --source PATH")


def _first(directory: Path, names):
    for n in names:
        for p in (directory / n, directory / (n + ".gz")):
            if p.is_file():
                return p
    return None


def _find_in(directory: Path):
    kaggle = _first(directory, ["fer2013.csv", "icml_face_data.csv"])
    if kaggle:
        return "kaggle", [kaggle]
    zips = sorted(directory.glob("*.zip"))
    if zips:
        return "zip", [zips[0]]
    train = _first(directory, ["train.csv"])
    test = _first(directory, ["test_with_emotions.csv", "test.csv"])
    if train and test and not _written_by_us(directory, train):
        return "course", [train, test]
    if train and not test and not _written_by_us(directory, train):
        raise UserError(f"found {train} but no test_with_emotions.csv or test.csv beside it")
    return None


def _written_by_us(directory: Path, path: Path) -> bool:
    manifest = directory / "prepared.json"
    try:
        return path.name in json.loads(manifest.read_text()).get("outputs", [])
    except (OSError, ValueError):
        return False


def fingerprint(paths) -> str:
    """Cheap identity of input files: name, size and mtime."""
    parts = [f"{Path(p).resolve()}:{os.path.getsize(p)}:{int(os.path.getmtime(p))}" for p in paths]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def load_fer2013(kind: str, paths, skip_bad_rows: bool = False):
    """Read FER2013 in any supported layout. Returns (x uint8, y int8, usage str, n_dropped)."""
    if kind == "kaggle":
        df = parse_csv_table(read_csv_text(paths[0]), str(paths[0]))
        return validate_rows(df, str(paths[0]), skip_bad_rows)
    if kind == "zip":
        return _load_zip(paths[0], skip_bad_rows)
    train_df = parse_csv_table(read_csv_text(paths[0]), str(paths[0]))
    test_df = parse_csv_table(read_csv_text(paths[1]), str(paths[1]))
    return _combine_course(train_df, test_df, str(paths[0]), str(paths[1]), skip_bad_rows)


def _combine_course(train_df, test_df, train_name, test_name, skip_bad_rows):
    if "emotion" not in test_df.columns:
        raise UserError(f"{test_name} has no emotion column: the test labels are needed "
                        "(use the course's test_with_emotions.csv or the Kaggle fer2013.csv)")
    if "Usage" not in train_df.columns:
        train_df = train_df.assign(Usage="Training")
    if "Usage" not in test_df.columns:
        # The course's test file is PublicTest followed by PrivateTest, 3,589 rows each.
        half = len(test_df) // 2
        test_df = test_df.assign(Usage=["PublicTest"] * half + ["PrivateTest"] * (len(test_df) - half))
    x1, y1, u1, d1 = validate_rows(train_df, train_name, skip_bad_rows)
    x2, y2, u2, d2 = validate_rows(test_df, test_name, skip_bad_rows)
    return np.concatenate([x1, x2]), np.concatenate([y1, y2]), np.concatenate([u1, u2]), d1 + d2


def _load_zip(path: Path, skip_bad_rows):
    """The Kaggle challenge zip: fer2013.csv (possibly inside fer2013.tar.gz) or icml_face_data.csv."""
    import tarfile
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for want in ("icml_face_data.csv", "fer2013.csv"):
                match = [n for n in names if n.endswith(want)]
                if match:
                    text = z.read(match[0]).decode("utf-8")
                    return validate_rows(parse_csv_table(text, f"{path}:{match[0]}"), f"{path}:{match[0]}", skip_bad_rows)
            tars = [n for n in names if n.endswith(".tar.gz")]
            if tars:
                with tarfile.open(fileobj=io.BytesIO(z.read(tars[0]))) as t:
                    member = next((m for m in t.getmembers() if m.name.endswith("fer2013.csv")), None)
                    if member:
                        text = t.extractfile(member).read().decode("utf-8")
                        return validate_rows(parse_csv_table(text, f"{path}:{member.name}"), str(path), skip_bad_rows)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    raise UserError(f"{path} holds no fer2013.csv or icml_face_data.csv")


def stratified_validation_split(y, fraction: float = 0.1, seed: int = 42):
    """Boolean mask of validation rows: `fraction` of every class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        n_val = int(round(fraction * len(idx)))
        is_val[rng.choice(idx, n_val, replace=False)] = True
    return is_val


def load_prepared(data_dir: Path = DATA_DIR):
    """The arrays written by preprocess.py: dict with x_train, y_train, x_val, y_val,
    x_test, y_test, usage_test (x: uint8 [n,48,48,1])."""
    path = Path(data_dir) / PREPARED_NPZ
    if not path.exists():
        raise UserError(f"prepared data not found at {path}: run `python scripts/preprocess.py` first")
    try:
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise UserError(f"{path} is unreadable ({err}): run `python scripts/preprocess.py` again") from None
    for k in ("x_train", "x_val", "x_test"):
        data[k] = data[k][..., None]
    return data


def load_test_csv(path: Path):
    """A labelled test file in the course format (emotion,pixels[,Usage]), as written by
    preprocess.py: (x uint8 [n,48,48,1], y int [n], usage)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"test data not found at {path}: run `python scripts/preprocess.py` first")
    df = parse_csv_table(read_csv_text(path), str(path))
    if "Usage" not in df.columns:
        df = df.assign(Usage="PublicTest")
    x, y, usage, _ = validate_rows(df, str(path), bad_rows_hint=False)
    return x[..., None], y.astype(int), usage


def validation_in_training(data):
    """The validation rows added to the training rows, for the final refit of a chosen
    recipe; they stay in x_val too, so each epoch still reports on them (as seen images)."""
    return {**data, **{f"{k}_train": np.concatenate([data[f"{k}_train"], data[f"{k}_val"]])
                       for k in ("x", "y")}}


def subset(data, n_train, seed):
    """A random slice of n_train training images and a quarter as many validation images
    (test images untouched), for quick runs."""
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(data["x_train"]))[:n_train]
    va = rng.permutation(len(data["x_val"]))[:max(n_train // 4, 1)]
    return {**data, **{f"{k}_train": data[f"{k}_train"][tr] for k in ("x", "y")},
            **{f"{k}_val": data[f"{k}_val"][va] for k in ("x", "y")}}


# ---------------------------------------------------------------- FER+ votes
# fer2013new.csv (Microsoft's FER+, MIT): ten taggers' votes per FER2013 image, row-aligned
# with fer2013.csv. Its columns for our seven classes, in EMOTIONS order; contempt, unknown
# and NF (not a face) have no class of ours and are left out of the majority label.
FERPLUS_COLUMNS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]


def load_ferplus(path: Path, data: dict) -> dict:
    """`data` with the FER+ votes over the seven classes added as ferplus_train, ferplus_val
    and ferplus_test (float32 [n,7], rows aligned with x_train, x_val, x_test). An image
    FER+ dropped (blank name) or that got no vote on the seven classes has all-zero votes:
    its taggers called it not a face, or nothing of ours."""
    import pandas as pd
    path = Path(path)
    try:
        votes = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the FER+ votes {path}: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    missing = [c for c in ["Usage", "Image name", *FERPLUS_COLUMNS] if c not in votes.columns]
    if missing:
        raise UserError(f"{path} is not FER+'s fer2013new.csv: no column {', '.join(missing)}")
    numbers = votes[FERPLUS_COLUMNS].apply(pd.to_numeric, errors="coerce")
    bad = (numbers.isna() & votes[FERPLUS_COLUMNS].notna()) | ~((numbers >= 0) & (numbers <= 10)) & numbers.notna()
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        value = votes.iloc[row][FERPLUS_COLUMNS[column]]
        raise UserError(f"{path}, row {row + 2}: {FERPLUS_COLUMNS[column]} is '{value}', not a vote count from 0 to 10")
    counts = numbers.fillna(0).to_numpy(np.float32, copy=True)
    counts[votes["Image name"].isna().to_numpy()] = 0
    usage = votes["Usage"].astype(str).to_numpy()
    training, test = counts[usage == "Training"], counts[usage != "Training"]
    n_training = len(data["x_train"]) + len(data["x_val"])
    if len(training) != n_training or len(test) != len(data["x_test"]) or \
            list(usage[usage != "Training"]) != list(data["usage_test"]):
        raise UserError(f"{path} does not line up with the prepared data ({len(training):,} Training and "
                        f"{len(test):,} test rows against {n_training:,} and {len(data['x_test']):,}): FER+ "
                        "needs every row of the original fer2013.csv (prepared without --skip-bad-rows)")
    is_val = np.zeros(n_training, bool)
    is_val[data["val_rows_in_train_csv"]] = True
    return {**data, "ferplus_train": training[~is_val], "ferplus_val": training[is_val], "ferplus_test": test}


def ferplus_majority(votes):
    """The FER+ majority label of each row (the class with the most votes, ties to the first
    in EMOTIONS order), -1 where no vote fell on the seven classes."""
    votes = np.asarray(votes)
    return np.where(votes.sum(1) > 0, votes.argmax(1), -1)


# ---------------------------------------------------------------- k-fold cross-validation
def k_folds(y, k, seed):
    """Fold number (0..k-1) of each training row: every class dealt evenly over the folds
    in a random order fixed by `seed`."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def fold_split(data, fold, k):
    """The data for fold k: trains on the training rows of the other folds and validates on
    its own; the validation split and the test rows are set aside (x_val becomes the fold's
    held-out rows)."""
    held = fold == k
    split = {f"{name}_{part}": data[f"{name}_train"][rows]
             for name in ("x", "y")
             for part, rows in (("train", ~held), ("val", held))}
    return {**data, **split}
