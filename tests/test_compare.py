"""compare_models.py: the paired test behind iterations.md's decisions."""
import numpy as np
import pytest

from measure.compare_models import mcnemar_p
from conftest import run_script, full

pytestmark = full  # minutes: training, the full dataset, the committed model on every test image


def test_mcnemar_exact_p_values():
    a = np.array([True] * 10 + [False] * 5)
    b = np.array([False] * 10 + [False] * 5)
    assert mcnemar_p(a, b) == (pytest.approx(2 / 2 ** 10), 10, 0)  # 10 discordant pairs, all one way
    assert mcnemar_p(a, a)[0] == 1.0  # no discordant pair
    c = np.array([True] * 5 + [False] * 5 + [True] * 5)  # 5 right only in a, 5 only in c
    assert mcnemar_p(a, c)[0] == 1.0


def test_a_model_against_itself(tiny_model, prepared_data):
    folder, _ = tiny_model
    model = folder / "my_own_model.pkl"
    result = run_script("measure/compare_models.py", model, "--baseline", model, "--tta", "none", "--data-dir", prepared_data)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    accuracies = {line.split()[0]: line.split()[1] for line in lines[1:4]}
    assert accuracies["baseline"] == accuracies["candidate"] == accuracies["ensemble"]
    assert "+0.00 points" in lines[4] and "McNemar p = 1.000" in lines[4]
