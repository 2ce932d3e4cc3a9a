"""train.py against a damaged snapshot and a full disk: one `error:` line, never a
traceback or a crash, and the last good snapshot kept so that the run can resume.

A full disk is simulated with RLIMIT_FSIZE (writes past N bytes fail with EFBIG, "File too
large"; SIGXFSZ ignored so the write fails instead of killing the process). The data is a
tiny prepared-data file written here, so nothing needs ../shared."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SCRIPTS, assert_clean_error, full

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image

EPOCHS = 5
# Relative paths: config.json records them, so a copy of the folder is the same run.
ARGS = ["--data-dir", "data", "--out", "out", "--epochs", str(EPOCHS), "--batch-size", "32", "--width", "4",
        "--erase-prob", "0", "--mixed-precision", "off", "--no-evaluate", "--no-batch-norm-pass"]
RUN = "out/my_own_model_run"


def write_tiny_data(folder):
    """A prepared-data file as preprocess.py writes it (random pixels): 128 train, 32 val."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def part(n):
        return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), (np.arange(n) % 7).astype(np.int8)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = part(128), part(32), part(14)
    np.savez(folder / "fer2013_prepared.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test, usage_test=np.array(["PublicTest"] * 7 + ["PrivateTest"] * 7))


def train(cwd, file_limit=None, timeout=300):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *ARGS], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if file_limit else None)


def snapshots(work, pattern="epoch-[0-9][0-9][0-9][0-9]"):
    return sorted(p.name for p in (work / RUN).glob(pattern))


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed after its first snapshot: a folder with data/ and out/ (the run folder)."""
    work = tmp_path_factory.mktemp("killed_run")
    write_tiny_data(work / "data")
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *ARGS], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not snapshots(work):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(snapshots(work)) == 1, snapshots(work, "*")
    return work


@pytest.fixture
def work(killed_run, tmp_path):
    """This test's own copy of the killed run."""
    shutil.copytree(killed_run, tmp_path / "w")
    return tmp_path / "w"


def _state(work):
    return work / RUN / snapshots(work)[0] / "state.json"


def damage_state(change):
    def apply(work):
        state = json.loads(_state(work).read_text())
        _state(work).write_text(json.dumps(change(state)))
    return apply


def _one_more_row(s):
    return {**s, "history": s["history"] + [{**s["history"][-1], "epoch": len(s["history"])}],
            "wall_seconds": s["wall_seconds"] + [1.0]}


DAMAGE = {
    "history is a number": (damage_state(lambda s: {"history": 5}), "history is not a list"),
    "state is a list": (damage_state(lambda s: [s]), "state.json is not a JSON object"),
    "no wall_seconds": (damage_state(lambda s: {k: v for k, v in s.items() if k != "wall_seconds"}), "wall_seconds"),
    "wall_seconds too long": (damage_state(lambda s: {**s, "wall_seconds": s["wall_seconds"] + [1.0]}),
                              "wall_seconds"),
    "row without val_accuracy": (damage_state(lambda s: {**s, "history": [
        {k: v for k, v in row.items() if k != "val_accuracy"} for row in s["history"]]}), "history row 0"),
    "row not a dict": (damage_state(lambda s: {**s, "history": [[1, 2]] * len(s["history"])}), "history row 0"),
    "best_epoch past the end": (damage_state(lambda s: {**s, "best_epoch": len(s["history"])}), "best_epoch"),
    "best_epoch null": (damage_state(lambda s: {**s, "best_epoch": None}), "best_epoch"),
    "more epochs than the snapshot's name": (damage_state(_one_more_row), "records"),
    "model.keras missing": (lambda work: (_state(work).parent / "model.keras").unlink(), "model.keras is missing"),
    "config.json is a list": (lambda work: (work / RUN / "config.json").write_text("[1, 2]"),
                              "config.json: not a JSON object"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_snapshot_is_refused_with_one_line(work, damage):
    apply, fragment = DAMAGE[damage]
    apply(work)
    assert_clean_error(train(work), "is damaged", fragment, "--fresh")


def test_failed_snapshot_write_keeps_the_previous_one_and_the_run_resumes(work):
    """model.keras (about 900 kB here) is past the limit: the next snapshot fails."""
    before = snapshots(work)
    done = int(before[0].split("-")[1])
    kept = {p.name: p.read_bytes() for p in (work / RUN / before[0]).iterdir()}
    result = train(work, file_limit=200_000)
    assert result.returncode == 1, result.stderr[-3000:]  # not 139 (the HDF5 crash at exit) nor 134
    assert_clean_error(result, f"cannot write the snapshot of epoch {done + 1}", "model.keras",
                       "File too large", f"resume after epoch {done}")
    assert f"resuming after epoch {done}" in result.stdout
    assert snapshots(work, "epoch-*") == before  # no half-written snapshot, not even as .tmp
    assert {p.name: p.read_bytes() for p in (work / RUN / before[0]).iterdir()} == kept

    result = train(work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming after epoch {done}" in result.stdout
    assert (work / "out" / "my_own_model.pkl").stat().st_size > 100_000
    assert (work / "out" / "history.csv").read_text().count("\n") == 1 + EPOCHS
    assert not (work / RUN).exists()


def test_first_snapshot_failure_leaves_no_snapshot(tmp_path):
    write_tiny_data(tmp_path / "data")
    result = train(tmp_path, file_limit=200_000)
    assert result.returncode == 1, result.stderr[-3000:]
    assert_clean_error(result, "cannot write the snapshot of epoch 1", "File too large", "start again")
    assert snapshots(tmp_path, "epoch-*") == []


def test_tensorboard_write_failure_is_one_line(work):
    """Just room for config.json (rewritten, the same): the TensorBoard event files pass
    that size (about 400 bytes) at the first validation pass, before the next snapshot."""
    before = snapshots(work)
    result = train(work, file_limit=(work / RUN / "config.json").stat().st_size + 1)
    assert result.returncode == 1, result.stderr[-3000:]
    assert_clean_error(result, "cannot write the TensorBoard logs", "File too large")
    assert snapshots(work, "epoch-*") == before


def test_snapshot_writes_no_hdf5_file_of_its_own(killed_run):
    """A failed HDF5 write straight to disk (Keras' save_weights) leaves HDF5 ids behind
    that crash the interpreter at exit (exit 139): the best weights are a hard link to
    the best epoch's model.keras, whose HDF5 part is built in memory."""
    snapshot = killed_run / RUN / snapshots(killed_run)[0]
    assert sorted(p.name for p in snapshot.iterdir()) == ["best.keras", "model.keras", "state.json"]
