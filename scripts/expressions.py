"""Shared logic of the facial-expression toolkit: labels, paths, FER2013 loading,
model I/O, and (below) face detection and cropping.

Every script in scripts/ imports this module; nothing here is copied into a script.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

# TensorFlow's C++ start-up chatter (oneDNN, CPU feature notes) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# OpenCV's own warnings (a missing camera, say) would duplicate our one-line messages.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def import_tensorflow():
    """Import TensorFlow and Keras with the lines their C++ start-up writes straight to the
    stderr file descriptor hidden (TF_CPP_MIN_LOG_LEVEL does not reach them)."""
    if "keras" not in sys.modules:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import tensorflow  # noqa: F401
            import keras  # noqa: F401
            tensorflow.constant(0)  # the first op loads the CPU kernels, which also print
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
            os.close(saved)
    return sys.modules["tensorflow"], sys.modules["keras"]

# ---------------------------------------------------------------- labels & paths
# FER2013's label ids, in the order the model outputs them.
EMOTIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
IMAGE_SIZE = 48
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
USAGES = ("Training", "PublicTest", "PrivateTest")

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
RESULTS_DIR = ROOT / "results"
MODEL_DIR = RESULTS_DIR / "model"
MODEL_PATH = MODEL_DIR / "my_own_model.pkl"
# Short names for the committed models, accepted wherever a model path is.
MODEL_ALIASES = {"own": MODEL_PATH, "pre_trained": MODEL_DIR / "pre_trained_model.pkl"}
PREPROCESSING_TEST_DIR = RESULTS_DIR / "preprocessing_test"
HACK_DIR = RESULTS_DIR / "hack_cnn"
SHARED_DIR = ROOT.parent / "shared"  # read-only data and media beside the project, when present
SHARED_FER2013 = SHARED_DIR / "data" / "fer2013" / "fer2013.csv.gz"
PREPARED_NPZ = "fer2013_prepared.npz"  # under the data directory
KAGGLE_URL = ("https://www.kaggle.com/c/challenges-in-representation-learning-"
              "facial-expression-recognition-challenge/data")


class UserError(Exception):
    """A problem the user can fix (missing file, bad format, ...): shown as one line."""


def cpu_name():
    """The CPU model, for the machine line of reports."""
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_cli(main):
    """Run a script's main(); user errors become one line on stderr and exit code 1."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


# ---------------------------------------------------------------- reading FER2013
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


def validate_rows(df, name: str, skip_bad_rows: bool = False, need_usage: bool = True):
    """Check every row (2,304 integer pixels 0..255, label 0..6, known Usage).

    Returns (pixels uint8 [n,48,48], labels int8 [n], usage array of str, n_dropped).
    Bad rows are reported with their line number in the file (header = line 1).
    """
    required = ["emotion", "pixels"] + (["Usage"] if need_usage else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)} "
                        f"(found {', '.join(df.columns) or 'none'}; expected emotion,pixels,Usage)")
    pixels = df["pixels"].str.strip()
    problems = {}  # line number -> reason
    good_pixels = pixels.str.fullmatch(_PIXELS_RE.pattern)
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
                            "Fix the file or pass --skip-bad-rows to drop them")
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
    'course' (train.csv + test file) or 'zip'. Looks in data_dir, then ../shared."""
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
    if SHARED_FER2013.exists():
        return "kaggle", [SHARED_FER2013]
    raise UserError(
        f"no FER2013 data found: looked in {data_dir} for fer2013.csv[.gz], the challenge .zip, "
        f"or train.csv[.gz] + test_with_emotions.csv[.gz]/test.csv[.gz], and at {SHARED_FER2013}. "
        f"Download fer2013.csv from {KAGGLE_URL} into {data_dir}")


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


# ---------------------------------------------------------------- model I/O
def save_model(model, path: Path):
    """Pickle a Keras model atomically, so a crash never leaves a broken file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(model, f)
    os.replace(tmp, path)


def model_path(name) -> Path:
    """A model file: 'own' / 'pre_trained' name the committed models, anything else is a path."""
    return Path(MODEL_ALIASES.get(str(name), name))


def load_model(path: Path = MODEL_PATH):
    """Load a pickled Keras model (a path, or 'own' / 'pre_trained') and check it maps
    48x48x1 pixels to 7 probabilities."""
    path = model_path(path)
    if not path.exists():
        how = "python scripts/train.py" + (" --backbone mobilenet" if path.name.startswith("pre_trained") else "")
        raise UserError(f"model not found at {path}: train one with `{how}`")
    import_tensorflow()  # unpickling needs Keras imported
    try:
        with open(path, "rb") as f:
            model = pickle.load(f)
    except Exception as err:
        raise UserError(f"cannot load model {path}: {err.__class__.__name__}: {err}") from None
    in_shape = tuple(getattr(model, "input_shape", ()) or ())
    out_shape = tuple(getattr(model, "output_shape", ()) or ())
    if in_shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1) or out_shape[1:] != (len(EMOTIONS),):
        raise UserError(f"model {path} maps {in_shape} to {out_shape}; expected "
                        f"(None, 48, 48, 1) to (None, 7)")
    return model


# ---------------------------------------------------------------- prediction
def make_predictor(model, flip_tta: bool = True, shift: int = 0):
    """A compiled function: uint8/float images [n,48,48,1] -> probabilities [n,7].

    Calling the model inside a tf.function avoids model.predict's large per-call cost
    (about 50 ms), which matters for video. With flip_tta the prediction is the average
    over the image and its mirror image (the test-time augmentation predict.py uses);
    shift > 0 also averages over the image moved by that many pixels left, right, up
    and down (5 positions, 10 views with the flip).
    """
    tf, _ = import_tensorflow()
    offsets = [(0, 0)] + ([(shift, 0), (-shift, 0), (0, shift), (0, -shift)] if shift else [])

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32)])
    def predict_float(x):  # one trace for every batch size
        views = [x]
        if shift:
            padded = tf.pad(x, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="SYMMETRIC")
            views = [padded[:, shift + dy:shift + dy + IMAGE_SIZE, shift + dx:shift + dx + IMAGE_SIZE]
                     for dx, dy in offsets]
        if flip_tta:
            views += [tf.reverse(v, axis=[2]) for v in views]
        n = tf.shape(x)[0]
        p = tf.cast(model(tf.concat(views, 0), training=False), tf.float32)
        return tf.reduce_mean(tf.reshape(p, [len(views), n, len(EMOTIONS)]), axis=0)

    def predict(x):
        return predict_float(tf.cast(x, tf.float32))

    return predict


# Test-time augmentation modes: (flip, shift in pixels) for make_predictor. flip+shift was
# the best on the validation split (see the README); it is predict.py's default.
TTA_MODES = {"none": (False, 0), "flip": (True, 0), "flip+shift": (True, 2)}
DEFAULT_TTA = "flip+shift"

_predictors = {}


def predict_in_batches(model, x, flip_tta: bool = True, batch_size: int = 256, shift: int = 0):
    key = (id(model), flip_tta, shift)  # one compiled function per model, not one per call
    if key not in _predictors:
        _predictors[key] = make_predictor(model, flip_tta, shift)
    predict = _predictors[key]
    out = [predict(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)


def classification_report(y_true, y_pred, usage=None):
    """Accuracy (overall and per split), per-class precision/recall/F1, macro-F1, confusion matrix."""
    n = len(EMOTIONS)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(n), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    report = {"accuracy": float((y_true == y_pred).mean()), "n": int(len(y_true))}
    if usage is not None:
        for split in ("PublicTest", "PrivateTest"):
            m = usage == split
            if m.any():
                report[f"accuracy_{split}"] = float((y_true[m] == y_pred[m]).mean())
    report["per_class"] = {EMOTIONS[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                         "f1": float(f1[k]), "support": int(cm[k].sum())} for k in range(n)}
    report["macro_f1"] = float(f1.mean())
    report["confusion_matrix"] = cm.tolist()
    return report


# ---------------------------------------------------------------- faces
# Share of the detector's box added on each side before cropping. FER2013 faces are
# framed a little wider than OpenCV's Haar box; the value was chosen by measurement
# (see the README, "Face crop").
CROP_MARGIN = 0.1
DETECT_WIDTH = 320  # frames are searched for faces at this width: 4x fewer pixels than 640x480


def load_face_detector():
    """OpenCV's bundled frontal-face Haar cascade (ships in the opencv wheel, works offline)."""
    import cv2
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise UserError("this OpenCV has no Haar cascades (OpenCV 5?): pip install 'opencv-python-headless<5'")
    detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if detector.empty():
        raise UserError("cannot load OpenCV's haarcascade_frontalface_default.xml")
    return detector


def to_gray(image):
    import cv2
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_faces(gray, detector, detect_width=DETECT_WIDTH, min_face=40):
    """Every face in a grey frame, as (x, y, w, h) boxes in frame pixels, largest first.
    The search runs on a copy scaled down to detect_width for speed."""
    import cv2
    scale = min(1.0, detect_width / gray.shape[1])
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    min_side = max(12, int(min_face * scale))
    found = detector.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_face(gray, box, margin=CROP_MARGIN):
    """A 48x48 grey crop framed like FER2013: a square centred on the box, widened by
    `margin` on each side; parts outside the frame are filled by repeating the border."""
    import cv2
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    face = gray[y0:y0 + side, x0:x0 + side]
    return cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def read_image(path):
    """A photo as a BGR array, or a clear error."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: not an image file OpenCV can decode")
    return image


def detect_near(gray, detector, box, face_px=64):
    """Search for a face only around a box from the previous frame: the region is scaled
    so the old face is face_px wide and only faces of 0.6x..1.6x that size are tried,
    which costs a fraction of a full-frame search. Returns a box or None."""
    import cv2
    x, y, w, h = box
    x0, y0 = max(0, int(x - 0.5 * w)), max(0, int(y - 0.5 * h))
    x1, y1 = min(gray.shape[1], int(x + 1.5 * w)), min(gray.shape[0], int(y + 1.5 * h))
    scale = face_px / w
    roi = cv2.resize(gray[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found = detector.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5,
                                      minSize=(int(0.6 * face_px),) * 2, maxSize=(int(1.6 * face_px),) * 2)
    if not len(found):
        return None
    bx, by, bw, bh = max(found, key=lambda b: b[2] * b[3])
    return (int(x0 + bx / scale), int(y0 + by / scale), int(bw / scale), int(bh / scale))


class EmotionReader:
    """Detect every face in a frame and classify them all in one batch.

    For a stream of frames, the full-frame search runs every `full_every` frames (to pick
    up new faces); in between, each face is looked for only around where it just was.
    """

    def __init__(self, model, flip_tta=True, shift=0, margin=CROP_MARGIN, detect_width=DETECT_WIDTH,
                 full_every=5):
        self.detector = load_face_detector()
        self.predict = make_predictor(model, flip_tta, shift)
        self.margin, self.detect_width, self.full_every = margin, detect_width, full_every
        self.previous, self.frame_no = [], 0

    def find_faces(self, gray):
        boxes = None
        if self.previous and self.frame_no % self.full_every:
            boxes = [detect_near(gray, self.detector, b) for b in self.previous]
            boxes = None if any(b is None for b in boxes) else boxes  # lost one: search everywhere
        if boxes is None:
            boxes = detect_faces(gray, self.detector, self.detect_width)
        self.previous = boxes
        self.frame_no += 1
        return boxes

    def __call__(self, frame, still=False):
        """Returns (boxes, crops uint8 [n,48,48], probabilities [n,7]). still=True: a
        photo, unrelated to the previous frame (full search only)."""
        gray = to_gray(frame)
        boxes = detect_faces(gray, self.detector, self.detect_width) if still else self.find_faces(gray)
        if not boxes:
            return [], np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros((0, len(EMOTIONS)), np.float32)
        crops = np.stack([crop_face(gray, b, self.margin) for b in boxes])
        return boxes, crops, self.predict(crops[..., None]).numpy()


# Valence and arousal of the seven classes on Russell's circumplex, both in [-1, 1]:
# the positions of the matching words in Russell's multidimensional scaling of 28 affect
# words (J. A. Russell, "A circumplex model of affect", J. Personality and Social
# Psychology 39:1161-1178, 1980, Fig. 4), read off the figure. Russell's words: angry,
# annoyed (disgust has no word of its own there), afraid, happy, sad, astonished, and the
# origin for neutral. A face's valence and arousal are the probability-weighted sums.
VALENCE_AROUSAL = np.array([
    # valence, arousal
    [-0.52, 0.58],   # Angry     (angry)
    [-0.55, 0.41],   # Disgust   (annoyed)
    [-0.34, 0.64],   # Fear      (afraid)
    [0.83, 0.53],    # Happy     (happy)
    [-0.65, -0.27],  # Sad       (sad)
    [0.16, 0.89],    # Surprise  (astonished)
    [0.00, 0.00],    # Neutral   (origin)
])


def valence_arousal(probabilities):
    va = np.asarray(probabilities) @ VALENCE_AROUSAL
    return va[..., 0], va[..., 1]


def valence_colour(valence):
    """BGR box colour: red for negative, yellow-ish for neutral, green for positive valence."""
    t = float(np.clip((valence + 1) / 2, 0, 1))
    return (0, int(255 * min(1, 2 * t)), int(255 * min(1, 2 * (1 - t))))


def draw_faces(image, boxes, probabilities, ids=None):
    """Draw a box and 'Emotion NN%' over every face (in place); returns the image."""
    import cv2
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for i, (box, p) in enumerate(zip(boxes, probabilities)):
        x, y, w, h = box
        valence, _ = valence_arousal(p)
        colour = valence_colour(valence)
        k = int(np.argmax(p))
        text = (f"{ids[i]}: " if ids is not None else "") + f"{EMOTIONS[k]} {int(p[k] * 100)}%"
        thickness = max(2, image.shape[1] // 320)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        scale = max(0.5, image.shape[1] / 1000)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y - th - 8)
        cv2.rectangle(image, (x, top), (x + tw + 6, top + th + 8), colour, -1)
        cv2.putText(image, text, (x + 3, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image


# ---------------------------------------------------------------- video
def open_video(source):
    """A cv2.VideoCapture for a webcam index (int) or a file path / URL; None if it cannot be opened."""
    import cv2
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        return None
    ok, frame = cap.read()  # some backends "open" a device or file they cannot read
    if not ok or frame is None:
        cap.release()
        return None
    if not isinstance(source, int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # back to the first frame of a file
    return cap


def video_fps(cap):
    import cv2
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and 1 <= fps <= 240 else 30.0


def video_writer(path, fps, size):
    """An MP4 (mp4v) or AVI (MJPG) writer: the codecs the pip OpenCV wheel can write."""
    import cv2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise UserError(f"cannot write video {path} (use a .mp4 or .avi name in a writable folder)")
    return writer


class FaceTracker:
    """Stable face ids across frames: each new box takes the id of the overlapping box
    seen most recently (greedy, by intersection over union); unmatched boxes get new ids."""

    def __init__(self, min_iou=0.3, forget_after=2.0):
        self.tracks = {}  # id -> (box, last time seen)
        self.next_id = 1
        self.min_iou, self.forget_after = min_iou, forget_after

    @staticmethod
    def iou(a, b):
        ax, ay, aw, ah = a
        bx, by, bw, bh = b
        iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
        ih = max(0, min(ay + ah, by + bh) - max(ay, by))
        inter = iw * ih
        return inter / float(aw * ah + bw * bh - inter)

    def update(self, boxes, t):
        self.tracks = {i: v for i, v in self.tracks.items() if t - v[1] <= self.forget_after}
        pairs = sorted(((self.iou(b, tb), n, i) for n, b in enumerate(boxes)
                        for i, (tb, _) in self.tracks.items()), reverse=True)
        ids, used = [None] * len(boxes), set()
        for score, n, i in pairs:
            if score >= self.min_iou and ids[n] is None and i not in used:
                ids[n] = i
                used.add(i)
        for n in range(len(boxes)):
            if ids[n] is None:
                ids[n] = self.next_id
                self.next_id += 1
            self.tracks[ids[n]] = (boxes[n], t)
        return ids


def format_clock(seconds):
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}s"
