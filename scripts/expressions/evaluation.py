"""How the toolkit does on labelled photos of real faces (evaluate_photos.py): each photo
through the photo pipeline (EmotionRecognizer.analyze, as predict.py reads it), the
largest face's answer against the label.

LABELS.csv has the columns file and emotion (names in any case, spaces around them
ignored); files are relative to the CSV; an emotion is one of the seven in any case. Rows
with another label, missing files and files that are not images are counted and reported,
never fatal; a set with no face at all is. A photo listed twice counts once; one listed
with two of the seven labels counts under neither (its label is unknown)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from . import EMOTIONS, UserError
from .calibration import ece, reliability

PHOTO_COLUMNS = ["file", "label", "face_found", "predicted", "probability", *[e.lower() for e in EMOTIONS]]


def read_labels(labels_csv):
    """[(path, file as written, label index)] and the counts of rows set aside
    ({"other_labels", "repeated", "conflicting"}) from LABELS.csv."""
    labels_csv = Path(labels_csv)
    try:
        text = labels_csv.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {labels_csv}: {getattr(err, 'strerror', None) or err}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        return _labelled_rows(labels_csv, reader)
    except csv.Error as err:  # a field over the csv module's limit (a stray quote runs on for lines), a NUL
        raise UserError(f"cannot read {labels_csv}: line {reader.line_num}: {err}") from None


def _labelled_rows(labels_csv, reader):
    header = [h.strip().lower() for h in next(reader, [])]
    if "file" not in header or "emotion" not in header:
        raise UserError(f"{labels_csv} needs the columns file and emotion (found: {', '.join(header) or 'none'})")
    file_at, emotion_at = header.index("file"), header.index("emotion")
    names = {e.lower(): k for k, e in enumerate(EMOTIONS)}
    first, labels_of, other = {}, {}, 0
    line = reader.line_num + 1
    for row in reader:
        # A file or emotion over several lines is a stray quote: it would swallow the rows after it.
        if any("\n" in cell or "\r" in cell for cell in row[file_at:file_at + 1] + row[emotion_at:emotion_at + 1]):
            raise UserError(f"cannot read {labels_csv}: line {line}: a quoted field runs on to line "
                            f"{reader.line_num} (a stray quote?)")
        line = reader.line_num + 1
        if len(row) <= max(file_at, emotion_at) or not row[file_at].strip():
            other += bool(any(cell.strip() for cell in row))
            continue
        label = names.get(row[emotion_at].strip().lower())
        if label is None:
            other += 1
            continue
        file = row[file_at].strip()
        key = os.path.normpath(labels_csv.parent / file)  # a.jpg and ./a.jpg are one photo
        first.setdefault(key, (labels_csv.parent / file, file, label))
        labels_of.setdefault(key, []).append(label)
    conflicting = {key for key, labels in labels_of.items() if len(set(labels)) > 1}
    counts = {"other_labels": other,
              "repeated": sum(len(labels) - 1 for key, labels in labels_of.items() if key not in conflicting),
              "conflicting": sum(len(labels_of[key]) for key in conflicting)}
    return [row for key, row in first.items() if key not in conflicting], counts


def evaluate_photos(labels_csv, recognizer=None, progress=None):
    """Every labelled photo of LABELS.csv through `recognizer` (an EmotionRecognizer;
    default: predict.py's). Returns (report dict, per-photo rows). The report: counts
    (photos, other labels, missing, unreadable, without a face), the face-found rate,
    accuracy on the found faces and on every photo (no face counts as wrong), macro recall
    and F1, per-class recall, precision and F1, the expected calibration error of the top
    probability, the majority-class baseline and the confusion matrix."""
    from .api import EmotionRecognizer
    from .model import classification_report, model_path
    labelled, counts = read_labels(labels_csv)
    if not labelled:
        why = (f"every photo of {labels_csv} with one of the seven labels is listed with two of them"
               if counts["conflicting"] else
               f"no photo of {labels_csv} has one of the seven labels ({', '.join(EMOTIONS)})")
        raise UserError(why + describe(counts))
    recognizer = recognizer or EmotionRecognizer()
    counts.update(missing=0, unreadable=0, without_face=0)
    rows, found_y, found_p = [], [], []
    for k, (path, file, label) in enumerate(labelled, start=1):
        if not path.is_file():
            counts["missing"] += 1
            continue
        try:
            faces = recognizer.analyze(path)
        except UserError:
            counts["unreadable"] += 1
            continue
        if progress:
            progress(k, len(labelled))
        if not faces:
            counts["without_face"] += 1
            rows.append([file, EMOTIONS[label], False, "", ""] + [""] * len(EMOTIONS))
            continue
        p = np.array([faces[0].probabilities[e] for e in EMOTIONS])  # the largest face
        found_y.append(label)
        found_p.append(p)
        rows.append([file, EMOTIONS[label], True, faces[0].emotion, f"{p.max():.4f}", *[f"{v:.4f}" for v in p]])
    read = len(rows)
    if not found_y:
        raise UserError(f"no face was found in any of the {read} photos read from {labels_csv}"
                        + describe(counts))
    y, p = np.array(found_y), np.array(found_p)
    report = classification_report(y, p.argmax(1))
    recalls = [report["per_class"][e]["recall"] for e in EMOTIONS if report["per_class"][e]["support"]]
    all_labels = np.array([EMOTIONS.index(r[1]) for r in rows])
    majority = int(np.bincount(all_labels, minlength=len(EMOTIONS)).argmax())
    report.update({
        "labels_csv": str(labels_csv), "labelled": len(labelled), **counts, "read": read,
        "face_found_rate": len(y) / read, "accuracy_found": report["accuracy"],
        "accuracy_all": float((y == p.argmax(1)).sum() / read),
        "macro_recall": float(np.mean(recalls)), "ece": ece(p, y), "reliability": reliability(p, y),
        "majority_baseline": {"emotion": EMOTIONS[majority], "accuracy": float((all_labels == majority).mean())},
        "model": model_path(recognizer.model).name, "tta": recognizer.tta, "detector": recognizer.detector})
    return report, rows


def describe(counts):
    said = [f"{counts[k]} {what}" for k, what in (("other_labels", "with other labels"),
                                                   ("repeated", "listed again"),
                                                   ("conflicting", "rows left out (photos with two labels)"),
                                                   ("missing", "missing"), ("unreadable", "not images"),
                                                   ("without_face", "without a face"))
            if counts.get(k)]
    return f" ({', '.join(said)})" if said else ""


def photos_csv(rows):
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([PHOTO_COLUMNS] + rows)
    return text.getvalue()
