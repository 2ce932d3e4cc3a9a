"""evaluate_photos.py: labelled photos through the photo pipeline, scored; what a messy
labels file gets."""
import csv
import json
import shutil

import numpy as np
import pytest

from conftest import SHARED, assert_clean_error, run_script
from expressions import EMOTIONS
from expressions.outputs import own_image

PHOTOS = SHARED / "media" / "photos"
needs_photos = pytest.mark.skipif(not (PHOTOS / "labels.csv").exists(),
                                  reason=f"no labelled photos at {PHOTOS} (set EXPRESSIONS_SHARED)")


@needs_photos
def test_the_shared_photos_are_scored_as_predict_reads_them(tmp_path):
    result = run_script("evaluate_photos.py", PHOTOS / "labels.csv", "--json", tmp_path / "r.json",
                        "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "out" / "photos.csv")))
    labels = list(csv.DictReader(open(PHOTOS / "labels.csv")))
    assert report["labelled"] == report["read"] == len(rows) == len(labels)
    found = [r for r in rows if r["face_found"] == "True"]
    assert report["face_found_rate"] == len(found) / len(rows)
    correct = sum(r["predicted"] == r["label"] for r in found)
    assert report["accuracy_found"] == correct / len(found) and report["accuracy_all"] == correct / len(rows)
    assert 0 <= report["ece"] <= 1 and 0 < report["macro_recall"] <= 1
    counts = np.bincount([EMOTIONS.index(r["label"]) for r in rows], minlength=7)
    assert report["majority_baseline"]["accuracy"] == counts.max() / len(rows)
    assert f"accuracy on found faces: {correct / len(found):.1%}" in result.stdout
    assert own_image(tmp_path / "out" / "confusion.png") and own_image(tmp_path / "out" / "reliability.png")
    # Each photo's answer is predict.py's for its largest face.
    printed = run_script("predict.py", *[PHOTOS / r["file"] for r in rows[:4]], "--csv", tmp_path / "p.csv")
    assert printed.returncode == 0, printed.stderr[-1000:]
    first_faces = [r for r in csv.DictReader(open(tmp_path / "p.csv")) if r["face"] == "1"]
    assert [r["emotion"] for r in first_faces] == [r["predicted"] for r in rows[:4]]


@needs_photos
def test_a_messy_labels_file_is_counted_and_an_empty_or_faceless_one_refused(tmp_path):
    photos = sorted(PHOTOS.glob("*.jpg"))[:2]
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "labels.csv").write_text(
        " File , EMOTION \n"
        f"{photos[0].name}, happy \n"
        f"{photos[1].name},SAD\n"
        "missing.jpg,angry\n"
        "notes.jpg,fear\n"
        f"{photos[0].name},contempt\n"
        f"./{photos[1].name},sad\n"  # the same photo again: counted once
        "notes.jpg,fear\n"
        "missing.jpg,happy\n"  # two labels for one file: left out, both rows
        "gone.jpg,angry\n"
        "\n")
    result = run_script("evaluate_photos.py", tmp_path / "labels.csv", "--json", tmp_path / "r.json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert ("photos: 4 labelled, 2 read (1 with other labels, 2 listed again, 2 rows left out (photos with two "
            "labels), 1 missing, 1 not images)" in result.stdout), result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 2 and (report["repeated"], report["conflicting"]) == (2, 2)
    (tmp_path / "empty.csv").write_text("")
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "empty.csv"), "needs the columns file and emotion")
    (tmp_path / "other.csv").write_text("file,emotion\na.jpg,contempt\n")
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "other.csv"), "no photo")
    import cv2
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((120, 160, 3), 128, np.uint8))
    (tmp_path / "faceless.csv").write_text("file,emotion\ngrey.png,happy\n")
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "faceless.csv"), "no face was found")
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "nothere.csv"), "cannot read")
    (tmp_path / "quote.csv").write_text('file,emotion\n"' + "x" * 200_000 + ',happy\n')  # a stray quote runs on
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "quote.csv"), "line 2", "field larger")
    # A stray quote that closes a few lines on would swallow those rows as one odd label.
    (tmp_path / "quote2.csv").write_text(f'file,emotion\n{photos[0].name},happy\n"{photos[1].name},sad\nb.jpg",fear\n')
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "quote2.csv"), "line 3", "stray quote")
    (tmp_path / "twice.csv").write_text("file,emotion\na.jpg,happy\na.jpg,sad\n")
    assert_clean_error(run_script("evaluate_photos.py", tmp_path / "twice.csv"), "listed with two", "2 rows left out")
