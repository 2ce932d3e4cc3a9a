"""benchmark.py itself runs for minutes in its own environment and is not part of the
suite; here only what a user meets before any measurement starts."""
from conftest import assert_clean_error, run_script


def test_benchmark_without_media_says_where_it_looked(tmp_path):
    result = run_script("measure/benchmark.py", "--media", tmp_path, "--env", tmp_path / "env")
    assert_clean_error(result, "test media not found", str(tmp_path))
    assert not (tmp_path / "env").exists()  # nothing is installed before the inputs are checked

