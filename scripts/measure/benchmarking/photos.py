"""The labelled photos through each tool's whole pipeline (detect, crop, classify); the
largest face of each photo counts."""
from pathlib import Path

from expressions import EMOTIONS
from expressions import model as nets
from expressions.faces import read_image
from expressions.pipeline import EmotionReader


def accuracy_on_photos(model_name, detector, photo_dir: Path):
    import pandas as pd
    labels = pd.read_csv(photo_dir / "labels.csv")
    reader = EmotionReader(nets.frame_predictor(model_name, nets.DEFAULT_TTA)[0])  # as predict.py PHOTO
    fer_names = [e.lower() for e in EMOTIONS]
    rows, correct = [], {"ours": 0, "fer": 0}
    no_face = {"ours": 0, "fer": 0}
    for file, truth in zip(labels["file"], labels["emotion"]):
        image = read_image(photo_dir / file)
        found, _, proba = reader(image, still=True)
        ours = EMOTIONS[int(proba[0].argmax())].lower() if found else None
        faces = detector.detect_emotions(image)
        theirs = None
        if faces:
            face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
            theirs = max(fer_names, key=lambda e: face["emotions"][e])
        for tool, guess in (("ours", ours), ("fer", theirs)):
            correct[tool] += guess == truth
            no_face[tool] += guess is None
        rows.append({"file": file, "label": truth, "ours": ours, "fer": theirs})
    n = len(labels)
    print(f"  ours {correct['ours']}/{n}, fer {correct['fer']}/{n}", flush=True)
    return {"n": n, "correct": correct, "no_face": no_face, "per_photo": rows}
