"""analyze.py on a real two-node Ray cluster on 127.0.0.1 (a head and a second node, 1 CPU
each, started with `ray start` in a network and PID namespace of their own): the same rows
as on this machine, and a second node whose workers are killed mid-job loses nothing."""
import sys

import pandas as pd
import pytest

from conftest import SCRIPTS, full
from measure.benchmarking import cluster
from test_collection import PROBABILITIES, copies, make_collection, needs_media

WHY_NOT = cluster.unavailable()
needs_cluster = pytest.mark.skipif(WHY_NOT is not None, reason=f"no Ray cluster here: {WHY_NOT}")
SAME = ["input", "kind", "size", "mtime", "model", "second", "time", "face", "x", "y", "w", "h", "emotion", "frames"]


def analyze(*args):
    return [sys.executable, str(SCRIPTS / "analyze.py"), *map(str, args)]


@full
@needs_media
@needs_cluster
def test_two_nodes_give_the_rows_of_this_machine_even_when_a_node_loses_its_workers(tmp_path):
    folder = make_collection(tmp_path / "in")
    copies(folder / "more", 2)
    local = analyze(folder, "--out", tmp_path / "local", "--workers", "2")
    on_cluster = analyze(folder, "--out", tmp_path / "cluster", "--address", "127.0.0.1:6379")
    faulty = analyze(folder, "--out", tmp_path / "faulty", "--address", "127.0.0.1:6379")
    result = cluster.run_on_two_nodes([faulty, on_cluster, local],
                                      kill_node_workers_after=(tmp_path / "faulty" / "parts", 1))
    for run in result["runs"]:
        assert run["returncode"] == 1, run["stderr"][-3000:]  # the two unreadable inputs
        assert "Traceback" not in run["stderr"]
    assert result["killed"], "no worker of the second node was seen at work"
    tables = {name: (pd.read_parquet(tmp_path / name / "faces.parquet"),
                     pd.read_parquet(tmp_path / name / "inputs.parquet")) for name in ("local", "cluster", "faulty")}
    faces, inputs = tables["local"]
    assert len(inputs) == 12 and (inputs.status == "error").sum() == 2
    for name in ("cluster", "faulty"):
        other_faces, other_inputs = tables[name]
        pd.testing.assert_frame_equal(other_faces[SAME], faces[SAME])
        assert (other_faces[PROBABILITIES] - faces[PROBABILITIES]).abs().max().max() < 1e-6
        assert list(other_inputs.status) == list(inputs.status) and other_inputs.input.is_unique
    # Both nodes did work (a worker is HOST:PID).
    assert tables["cluster"][1].worker.dropna().nunique() >= 2
