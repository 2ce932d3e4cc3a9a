"""The network alone, ours against fer's: accuracy on the FER2013 test images, per-face
latency, and our training throughput."""
import time

import numpy as np

from expressions import UserError
from expressions import data as fer2013
from expressions import model as nets

from .fer_env import fer_preprocess


def our_models(model, pretrained):
    """(name prefix, model) pairs: ours, and the pre-trained one when there is one."""
    return [("ours", model)] + ([("ours pre-trained", pretrained)] if pretrained is not None else [])


def accuracy_on_test(model, pretrained, detector, fer_keras):
    data = fer2013.load_prepared()
    x, y, usage = data["x_test"], data["y_test"].astype(int), data["usage_test"]
    results = {}
    for prefix, m in our_models(model, pretrained):
        for name, tta in [(f"{prefix}, single pass", "none"), (f"{prefix}, {nets.DEFAULT_TTA} (predict.py)",
                                                                 nets.DEFAULT_TTA)]:
            results[name] = nets.predict_in_batches(m, x, tta).argmax(1)
    faces = fer_preprocess(x[..., 0])
    results["fer, default (quantized TFLite)"] = np.asarray(detector._classify_emotions(faces)).argmax(1)
    results["fer, Keras .hdf5 (float)"] = np.concatenate(
        [fer_keras(faces[i:i + 256, ..., None], training=False).numpy() for i in range(0, len(faces), 256)]).argmax(1)
    out = {}
    for name, pred in results.items():
        r = nets.classification_report(y, pred, usage)
        out[name] = {"accuracy": r["accuracy"], "PublicTest": r["accuracy_PublicTest"],
                     "PrivateTest": r["accuracy_PrivateTest"], "macro_f1": r["macro_f1"], "n": r["n"]}
        print(f"  {name:<36} {r['accuracy']:.2%} (PublicTest {r['accuracy_PublicTest']:.2%}, "
              f"PrivateTest {r['accuracy_PrivateTest']:.2%})", flush=True)
    return out


def timed(fn, calls):
    """Seconds per call over `calls` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


TTA_WORDS = {"none": "single pass", "flip": "mirror", "flip+shift": "10 views",
             nets.ALTERNATE: "mirror on every other frame (one pass per face)"}


def stream_classifiers(stream_model, stream_tta):
    """{name: predict} of the live stream's classifiers as it runs them (frame_predictor,
    with the TensorFlow Lite form fastest on this CPU): the default stream's, and the full
    ensemble's with the mirror (the stream's default before the fast model) and single pass.
    A model not made yet is left out, with a note."""
    out = {}
    for prefix, model_name, tta in (("default stream: ", stream_model, stream_tta), ("full ensemble, ", "own", "flip"),
                                    ("full ensemble, ", "own", "none")):
        try:
            # alternate runs one pass per face and frame: its cost per face is a single pass's
            predict, runtime = nets.frame_predictor(model_name, "none" if tta == nets.ALTERNATE else tta, "auto")
        except UserError as err:
            print(f"  note: {prefix}{model_name} left out of the latency table: {err}", flush=True)
            continue
        what = f"{model_name} model, " if prefix.startswith("default") else ""
        out[f"{prefix}{what}{TTA_WORDS[tta]} ({runtime})"] = predict
    return out


def latency(model, pretrained, detector, fer_keras, calls, stream_model="fast", stream_tta=nets.ALTERNATE):
    """Milliseconds per face: batch of 1, and per face in a batch of 64. The stream's
    classifiers (stream_classifiers), our model in Keras with each test-time augmentation,
    the pre-trained one's, and fer's."""
    faces = fer2013.load_prepared()["x_test"][:64]
    fer_faces = fer_preprocess(faces[..., 0])
    candidates = stream_classifiers(stream_model, stream_tta)
    candidates.update({f"ours (Keras), {mode}": nets.make_predictor(model, mode) for mode in nets.TTA_MODES})
    if pretrained is not None:
        candidates.update({f"ours pre-trained (Keras), {mode}": nets.make_predictor(pretrained, mode)
                           for mode in ("none", nets.DEFAULT_TTA)})
    out = {}
    for name, fn in list(candidates.items()) + [("fer, default (quantized TFLite)", "tflite"),
                                                ("fer, Keras .hdf5 (float)", "keras")]:
        out[name] = {}
        for batch, n_calls in ((1, calls), (64, max(calls // 5, 10))):
            if fn == "tflite":
                call = lambda: detector._classify_emotions(fer_faces[:batch])  # noqa: E731
            elif fn == "keras":  # as fer calls it with use_tflite=False: the model, eagerly
                call = lambda: fer_keras(fer_faces[:batch, ..., None]).numpy()  # noqa: E731
            else:
                call = lambda: np.asarray(fn(faces[:batch]))  # noqa: E731
            ms = timed(call, n_calls) * 1000 / batch
            out[name][f"batch{batch}"] = {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
                                          "p90": float(np.percentile(ms, 90))}
        print(f"  {name:<48} batch 1: {out[name]['batch1']['median']:.2f} ms, "
              f"batch 64: {out[name]['batch64']['median']:.3f} ms per face", flush=True)
    return out


def training_throughput(steps):
    """train.py's default network and input pipeline, batch 128, in each precision."""
    import keras
    from expressions import training
    train_ds, _ = training.make_datasets(fer2013.load_prepared(), 128, 0.25, seed=1)
    out = {}
    for precision in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        out[precision] = training.training_throughput(nets.build_cnn(), train_ds, steps)
        print(f"  {precision}: {out[precision]:.0f} images/s", flush=True)
    keras.mixed_precision.set_global_policy("float32")
    out["bf16_over_float32"] = out["mixed_bfloat16"] / out["float32"]
    return out
