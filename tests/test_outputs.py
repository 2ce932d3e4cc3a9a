"""The shared output code: checked before the work, atomic when written, one option per idea."""
import numpy as np
import pytest

from expressions import UserError, outputs


def test_failed_write_is_an_error_not_silence(tmp_path):
    with pytest.raises(UserError, match="cannot write"):
        outputs.write_image("/proc/x/y.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="cannot encode"):
        outputs.write_image(tmp_path / "y.unknown-format", np.zeros((8, 8), np.uint8))


def test_atomic_write_leaves_the_old_file_whole_when_it_fails(tmp_path):
    path = tmp_path / "result.txt"
    outputs.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]  # no temporary file left behind


def test_checks_create_missing_folders_and_refuse_files(tmp_path):
    assert outputs.check_file(tmp_path / "a" / "b" / "x.csv").parent.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="it is a file"):
        outputs.check_folder(tmp_path / "file")
    with pytest.raises(UserError, match="it is a folder"):
        outputs.check_file(tmp_path / "a")


def test_unique_names():
    assert outputs.unique_names(["a/x.jpg", "b/x.png", "x-2.jpg", "y.jpg"], ".out") == \
        ["x.out", "x-2.out", "x-2-2.out", "y.out"]
