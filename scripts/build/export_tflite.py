"""Derive the fast forms of a model for faces in frames: TensorFlow Lite.

The .pkl stays the model of record (predict.py's test accuracy is the .pkl's); the live
stream and photos classify faces with its TensorFlow Lite forms when they were made from
that very .pkl (FORM.json records the .pkl's SHA-256): the first kind is written to
MODEL.tflite, any other to MODEL.KIND.tflite, and at start the pipeline times each form on
the CPU it runs on and keeps the fastest (model.fastest_tflite).

    python scripts/build/export_tflite.py                         # results/model/my_own_model.tflite
    python scripts/build/export_tflite.py --model fast --kind int8 float32 dynamic
    python scripts/build/export_tflite.py --measure               # first measure every candidate runtime

--measure prints, for the Keras model in a compiled tf.function and for TensorFlow Lite in
float32, with float16 weights, with dynamic-range quantisation (int8 weights) and with full int8 quantisation
(calibrated on 500 training images): test accuracy on the 7,178 images with a single pass
and with the mirror (the live stream's mode), and milliseconds per face alone (median of
300 calls, 2 threads). Every kind that loses at most 0.3 points of single-pass test
accuracy against the Keras model is written, the fastest here first.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.outputs import check_file, write_bytes, write_json

KINDS = ("float32", "float16", "dynamic", "int8")
MAX_LOSS_POINTS = 0.3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    nets.add_model_option(p)
    p.add_argument("--kind", choices=KINDS, nargs="+", default=["dynamic"],
                   help="what to write without --measure, one or more of: float32, float16 (half-size weights), "
                        "dynamic (int8 weights, float activations), int8 (weights and activations); the first "
                        "goes to MODEL.tflite, the others to MODEL.KIND.tflite (default: dynamic, what --measure "
                        "chose for the committed model)")
    p.add_argument("--measure", action="store_true",
                   help="measure every runtime first (about 3 minutes) and write every kind within "
                        f"{MAX_LOSS_POINTS} points of the Keras model's single-pass test accuracy, the fastest "
                        "here first")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="prepared data: calibration images for int8 and, with --measure, the test set "
                        "(default: %(default)s)")
    return p.parse_args(argv)


def milliseconds(predict, face, calls=300):
    predict(face), predict(face)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(face)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def measure(model, data, blobs):
    """Accuracy and latency of each runtime; returns {name: figures}."""
    x, y = data["x_test"], data["y_test"].astype(int)
    face = x[:1]
    keras_predict = {tta: nets.make_predictor(model, tta) for tta in ("none", "flip")}
    results = {}
    for name in ("keras",) + tuple(blobs):
        row = {}
        for tta in ("none", "flip"):
            if name == "keras":
                proba = nets.predict_in_batches(model, x, tta)
                one = (lambda f, p=keras_predict[tta]: p(f).numpy())
            else:
                predictor = nets.TFLitePredictor(blobs[name], tta)
                proba = np.concatenate([predictor(x[i:i + 256]) for i in range(0, len(x), 256)])
                one = nets.TFLitePredictor(blobs[name], tta)
            row[f"accuracy_{tta}"] = float((proba.argmax(1) == y).mean())
            row[f"ms_{tta}"] = milliseconds(one, face)
        results[name] = row
        print(f"| {'Keras, tf.function' if name == 'keras' else 'TensorFlow Lite, ' + name} | "
              f"{row['accuracy_none']:.2%} | {row['accuracy_flip']:.2%} | {row['ms_none']:.2f} | "
              f"{row['ms_flip']:.2f} |", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    source = nets.model_path(args.model)
    kinds = list(KINDS) if args.measure else list(dict.fromkeys(args.kind))
    outs = {kind: check_file(form_path(args.model, kind, first=(n == 0)), "TensorFlow Lite model")
            for n, kind in enumerate(kinds)} if not args.measure else {}
    model = nets.load_model(args.model)
    data = calibration = None  # the training images: int8's calibration and --measure's test rows need them
    if args.measure or "int8" in kinds:
        data = fer2013.load_prepared(args.data_dir)
        x = data["x_train"]
        calibration = x[np.random.default_rng(0).choice(len(x), min(500, len(x)), replace=False)]
    blobs = {kind: nets.to_tflite(model, kind, calibration) for kind in kinds}
    if args.measure:
        print("| runtime | test accuracy, single pass | with the mirror | ms per face, single pass | with the "
              "mirror |\n|---|---|---|---|---|", flush=True)
        results = measure(model, data, blobs)
        floor = results["keras"]["accuracy_none"] - MAX_LOSS_POINTS / 100
        kinds = sorted((k for k in KINDS if results[k]["accuracy_none"] >= floor), key=lambda k: results[k]["ms_none"])
        print(f"within {MAX_LOSS_POINTS} points of the Keras model, fastest first: {', '.join(kinds)}")
        outs = {kind: check_file(form_path(args.model, kind, first=(n == 0)), "TensorFlow Lite model")
                for n, kind in enumerate(kinds)}
    command = " ".join(["python scripts/build/export_tflite.py", *map(str, sys.argv[1:] if argv is None else argv)])
    for kind, out in outs.items():
        write_bytes(out, blobs[kind])
        write_json(nets.record_path(out), {"source": source.name, "source_sha256": nets.file_sha256(source),
                                           "kind": kind, "command": command})
        print(f"wrote {out} ({kind}, {len(blobs[kind]) / 1e6:.2f} MB) and {nets.record_path(out).name}")
    return 0


def form_path(model_name, kind, first):
    """MODEL.tflite for the first kind written, MODEL.KIND.tflite for the others."""
    path = nets.tflite_path(model_name)
    return path if first else path.with_suffix(f".{kind}.tflite")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
