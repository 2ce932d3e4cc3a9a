"""Shared test helpers: paths, the shared-data skip, tiny generated FER2013-format files, and
the expensive things built once per session (the prepared dataset, one tiny trained model),
always in temporary folders, never in the repository."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
# Where FER2013 and the test media are is a test setting, not the toolkit's: EXPRESSIONS_SHARED
# (default: "shared" beside the repository). The tests pass these paths to the scripts.
SHARED = Path(os.environ.get("EXPRESSIONS_SHARED", ROOT.parent / "shared")).resolve()
SHARED_FER2013 = SHARED / "data" / "fer2013" / "fer2013.csv.gz"
SHARED_MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
sys.path.insert(0, str(SCRIPTS))

HAVE_FER2013 = SHARED_FER2013.exists()
needs_shared = pytest.mark.skipif(
    not HAVE_FER2013, reason=f"no FER2013 at {SHARED_FER2013} (set EXPRESSIONS_SHARED to the shared folder)")

def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="the full suite, as CI runs it: also the tests marked full (training runs, the "
                          "committed model over the 7,178 test images, serve.py in a subprocess, the browser)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: in the full suite only (python -m pytest --full)")


def pytest_collection_modifyitems(config, items):
    """The default tier, for a developer's loop, leaves out what is marked full."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="full suite only: python -m pytest -q tests --full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


full = pytest.mark.full

# A tiny network on a slice of the real data: the whole run takes seconds.
TINY = ["--subset", "384", "--batch-size", "64", "--width", "8", "--erase-prob", "0", "--lr", "0.05",
        "--mixed-precision", "off"]


def run_script(name, *args, cwd=ROOT, timeout=600):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result, *fragments):
    """A user error: non-zero exit, one 'error:' line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def member_logits(model, x):
    """Each member's logits [members, n, 7]: its last layer without the softmax. Tests compare
    folded models with these, not with log-probabilities: a tiny, over-confident network's
    probabilities underflow to 0 (log -inf), and a temperature above 1 brings those classes
    back."""
    import keras
    from expressions import model as nets
    logits = []
    for member in nets.ensemble_members(model):
        last = member.get_layer("emotion")
        features = keras.Model(member.inputs, last.input)(np.asarray(x, np.float32), training=False)
        kernel, bias = last.get_weights()
        logits.append(np.asarray(features, np.float64) @ kernel + bias)
    return np.stack(logits)


def fake_rows(n, usage, seed=0):
    """n synthetic rows (random pixels, labels cycling 0..6): never real dataset rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = " ".join(map(str, rng.integers(0, 256, 2304)))
        rows.append((i % 7, pixels, usage))
    return rows


def write_kaggle_csv(path, n_train=70, n_public=14, n_private=14):
    rows = fake_rows(n_train, "Training") + fake_rows(n_public, "PublicTest", 1) + fake_rows(n_private, "PrivateTest", 2)
    text = "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)
    if str(path).endswith(".gz"):
        import gzip
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        Path(path).write_text(text)
    return rows


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
    """The real dataset, prepared once per session by preprocess.py into a temporary folder."""
    if not HAVE_FER2013:
        pytest.skip(f"no FER2013 at {SHARED_FER2013} (set EXPRESSIONS_SHARED to the shared folder)")
    data_dir = tmp_path_factory.mktemp("data")
    result = run_script("preprocess.py", "--source", SHARED_FER2013, "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    return data_dir


@pytest.fixture(scope="session")
def tiny_model(prepared_data, tmp_path_factory):
    """One tiny model trained once per session by train.py (3 epochs, evaluated on the
    7,178 test images): (its folder, the finished process)."""
    out = tmp_path_factory.mktemp("tiny_model")
    result = run_script("train.py", *TINY, "--epochs", "3", "--data-dir", prepared_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result
