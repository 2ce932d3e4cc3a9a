"""The user's files are safe from the scripts: no input is overwritten, nor a file the
toolkit did not write; no output is read back as an input; an image bomb is refused from
its header; written files get the umask's permissions. Through the real scripts."""
import csv
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from conftest import assert_clean_error, run_script, full
from expressions import UserError, faces, outputs
from test_faces_video import astronaut_bgr


def png_bomb(path, side=30000):
    """A real PNG of side x side 1-bit grey pixels, all black: ~110 KB on disk, 2.7 GB as
    the BGR image OpenCV would decode it into."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z = zlib.compressobj(9)
    rows = (b"\0" + bytes(-(-side // 8))) * 1000  # each row: filter byte, then the packed bits
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def run_with_umask(umask, *args):
    old = os.umask(umask)  # inherited by the script's process
    try:
        return run_script(*args)
    finally:
        os.umask(old)


def mode(path):
    return oct(path.stat().st_mode & 0o777)


def test_outputs_never_overwrite_an_input_or_a_file_the_toolkit_did_not_write(tmp_path):
    photo = tmp_path / "me.jpg"
    cv2.imwrite(str(photo), astronaut_bgr())
    notes = tmp_path / "notes.csv"
    notes.write_text("my own notes\n")
    (tmp_path / "link.csv").symlink_to(photo)
    user_png = tmp_path / "me_emotions.png"  # the user's own image, named as predict.py would
    cv2.imwrite(str(user_png), np.full((50, 50, 3), 200, np.uint8))
    (tmp_path / "annotated").mkdir()
    other_png = tmp_path / "annotated" / "me_emotions.png"
    other_png.write_bytes(user_png.read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refusals = [
        ((photo, "--csv", photo), "one of the inputs"),
        ((photo, "--csv", tmp_path / "link.csv"), "one of the inputs"),  # a link to the photo is the photo
        ((photo, "--json", photo), "one of the inputs"),
        (("--test-csv", notes, "--json", notes), "one of the inputs"),  # evaluating: its test CSV
        ((photo, "--csv", notes), "did not write"),
        # The folder as its own --out: me.jpg's NAME_emotions.png is the user's photo there.
        ((tmp_path, "--out", tmp_path, "--csv", tmp_path / "faces.csv"), "one of the inputs"),
        ((photo, "--out", tmp_path / "annotated"), "did not write"),
    ]
    for args, fragment in refusals:
        assert_clean_error(run_script("predict.py", *args), fragment)
    # Refused before any work: every file as it was, nothing new (no CSV, no temporary file).
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@full
def test_rerun_into_the_photo_folder_replaces_its_own_outputs_and_never_reads_them(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    cv2.imwrite(str(album / "me.jpg"), astronaut_bgr())
    table, annotated = album / "faces.csv", album / "me_emotions.png"
    first = run_with_umask(0o022, "predict.py", album, "--out", album, "--csv", table)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in album.iterdir()) == ["faces.csv", "me.jpg", "me_emotions.png"]
    # Permissions of a plain open(path, "w"), not mkstemp's 0600.
    assert mode(table) == mode(annotated) == oct(0o666 & ~0o022)
    inode = annotated.stat().st_ino
    second = run_with_umask(0o027, "predict.py", album, "--out", album, "--csv", table)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "skipped 1 image this toolkit wrote" in second.stderr
    # No me_emotions_emotions.png: the count stays; both outputs were rewritten, not refused.
    assert sorted(p.name for p in album.iterdir()) == ["faces.csv", "me.jpg", "me_emotions.png"]
    assert annotated.stat().st_ino != inode and mode(table) == mode(annotated) == oct(0o666 & ~0o027)
    with open(table, newline="") as f:
        assert [(row["file"], row["face"]) for row in csv.DictReader(f)] == [(str(album / "me.jpg"), "1")]


def test_image_bomb_is_refused_from_its_header_and_the_good_photos_still_counted(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    bomb = png_bomb(album / "bomb.png")
    assert bomb.stat().st_size < 200_000 and faces.image_size(bomb) == (30000, 30000)
    cv2.imwrite(str(album / "good.jpg"), astronaut_bgr())
    result = run_script("predict.py", album, "--csv", tmp_path / "faces.csv")
    assert_clean_error(result, "bomb.png", "30000x30000", "--max-megapixels")  # exit code 1, as any unreadable photo
    assert "good.jpg: face 1 at" in result.stdout
    with open(tmp_path / "faces.csv", newline="") as f:
        assert [row["file"] for row in csv.DictReader(f)] == [str(album / "good.jpg")]
    # The limit is the option's: a lower one refuses the good photo (512x512) too.
    lower = run_script("predict.py", album / "good.jpg", "--max-megapixels", "0.2")
    assert_clean_error(lower, "good.jpg", "0.2 megapixels")
    # hack_the_cnn.py reads --image before it loads the model: one line, nothing written.
    hack = run_script("hack_the_cnn.py", "--image", bomb, "--out", tmp_path / "hack", "--max-megapixels", "500",
                      "--max-eps", "1", "--steps", "1")
    assert_clean_error(hack, "bomb.png", "megapixels")
    assert list((tmp_path / "hack").iterdir()) == []


def test_own_files_are_recognised_by_their_content_not_their_name(tmp_path):
    ours = outputs.write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    resaved = tmp_path / "b.png"  # the same pixels saved by another program: not ours
    cv2.imwrite(str(resaved), cv2.imread(str(ours)))
    assert outputs.own_image(ours) and not outputs.own_image(resaved)
    outputs.write_json(tmp_path / "marked.json", {"x": 1}, mark=True)
    outputs.write_json(tmp_path / "plain.json", {"x": 1})
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert outputs.written_here(tmp_path / "marked.json") and not outputs.written_here(tmp_path / "plain.json")
    assert outputs.written_here(tmp_path / "t.csv", "a,b") and not outputs.written_here(tmp_path / "t.csv", "a,c")
    # A marked file of another kind is ours too: replaced, unlike the plain one.
    outputs.check_user_outputs([(tmp_path / "marked.json", "CSV file", "a,c")])
    with pytest.raises(UserError, match="did not write"):
        outputs.check_user_outputs([(tmp_path / "plain.json", "JSON file", None)])
