"""Which classifier should the live stream run? Each candidate against the full ensemble.

    python scripts/measure/stream_candidates.py --media DIR   # a few minutes, run alone

The per-second line of a stream averages 15-30 frames, itself an average over views, so
averaging three networks and the mirror on every frame may pay six times for little.
Every video in --media (and the five-face video benchmark.py tiles from them) is read once
as the stream reads it (YuNet every 2nd frame, faces followed, crops); then each candidate
classifies the same crops and its per-second lines (face, emotion, percentage) are
compared with those of the full ensemble with the mirror, the stream's classifier until
2026-12-03. Candidates: the ensemble without the mirror; one member of it without the
mirror; the fast model (train.py --teacher own, member 1 distilled) with and without the
mirror, and with the mirror image on every other frame (one pass per face, both views in
each second: the stream's --tta alternate); the fast model on every 2nd frame only, and on
two frames' faces per call (batched across frames: the same lines, a different cost). For each: per-face milliseconds (one face, batch of
1, the runtime the stream would pick here; half of it for every 2nd frame), its operations
per face and from them an estimate for the issue's AVX2 host, FER2013 test
accuracy (7,178 images, every frame's classifier alone), and the agreement: the share of
per-second lines with the same emotion, and how far the percentages move where it is the
same. The rule, fixed before the fast model was trained: the stream's default is the
cheapest candidate that agrees on at least 95 % of the lines.

Writes results/benchmarks/stream_candidates.json and .md, with the CPU line.
"""
import argparse
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, RESULTS_DIR, UserError, machine, machine_line, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions.api import EmotionRecognizer
from expressions.outputs import check_folder, write_json, write_text

from benchmarking.videos import agreement, make_crowd_video

MIN_AGREEMENT = 0.95
# The AVX2 host (2 cores of an AMD EPYC, no AVX-512), measured alone: the full
# ensemble with the mirror took 11.4-12.0 ms per face in TensorFlow Lite (dynamic range;
# int8 10.3, float32 13.8: on AVX2 every kind runs at about the same rate of operations).
# A candidate's estimate there scales the lower figure by its share of the operations.
AVX2_HOST_ENSEMBLE_MIRROR_MS = 11.4

# Run in a child process twice, with this CPU's full instruction set and with AVX-512 turned
# off where the libraries allow it (oneDNN in TensorFlow, OpenCV's dispatch for YuNet):
# TensorFlow Lite's XNNPACK has no such switch, so an AVX2 host is approximated by the ratios.
ISA_PROBE = """
import json, sys, cv2, numpy as np
from expressions import model as nets
from expressions.faces import FaceDetector
out = {}
for name, model, tta in (("fast model, single pass", "fast", "none"), ("full ensemble, mirror", "own", "flip")):
    predict = nets.make_predictor(nets.load_model(model), tta)
    out[name] = nets.per_face_ms(lambda x: predict(x).numpy(), calls=100)
capture = cv2.VideoCapture(sys.argv[1])
frame = capture.read()[1]
detector = FaceDetector("yunet", 320)
out["YuNet, one 640x480 frame at 320 px"] = nets.per_face_ms(lambda x: detector.detect(frame), calls=100)
print(json.dumps(out))
"""
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENCV_CPU_DISABLE": "AVX512-SKX"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, required=True,  # test media are not the toolkit's: no default
                   help="folder with the test videos (*.mp4)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "benchmarks",
                   help="folder for stream_candidates.json and .md (default: %(default)s)")
    return p.parse_args(argv)


def stream_crops(video):
    """The stream's crops of a video, frame by frame: [(second, face ids, crops [n,48,48,1])]."""
    recognizer = EmotionRecognizer("fast", tta="none")
    seen = []

    def keep(crops):  # the tracker's ids do not depend on the probabilities
        seen.append(np.array(crops))
        return np.full((len(crops), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)

    recognizer.classify = keep
    frames = []
    for frame in recognizer.stream(str(video)):  # frames come in the order they were classified
        crops = seen.pop(0) if frame.faces else np.zeros((0, 48, 48, 1), np.uint8)
        frames.append((int(frame.time), [f.id for f in frame.faces], crops))
    return frames


def per_second_lines(frames, classify, every=1, alternate=False):
    """{(second, face id): (emotion, percent)} as the stream prints them, classifying every
    `every`th frame (the others reuse nothing: a second averages the frames classified);
    alternate=True mirrors every other frame's crops, as EmotionReader does."""
    sums, counts = defaultdict(lambda: np.zeros(len(EMOTIONS))), defaultdict(int)
    classified = 0
    for n, (second, ids, crops) in enumerate(frames):
        if len(ids) and n % every == 0:
            classified += 1
            mirrored = alternate and classified % 2 == 0
            for face_id, p in zip(ids, classify(crops[:, :, ::-1] if mirrored else crops)):
                sums[second, face_id] += p
                counts[second, face_id] += 1
    return {key: (EMOTIONS[int(np.argmax(s))], int(round(s.max() / counts[key] * 100))) for key, s in sums.items()}


def gflops(model):
    """Multiply-adds x 2 of one face through a Keras model (convolutions and dense layers)."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += gflops(layer) * 1e9
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            total += 2 * h * w * c_out * layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total / 1e9


def candidates():
    """name -> (predict function on crops, runtime, every Nth frame, GFLOPs per face,
    mirror every other frame)."""
    out = {}
    ensemble, fast = nets.load_model("own"), nets.load_model("fast")
    for name, model, tta in (("full ensemble, mirror (the reference)", "own", "flip"),
                             ("full ensemble, single pass", "own", "none"),
                             ("fast model, mirror", "fast", "flip"),
                             ("fast model, single pass", "fast", "none")):
        predict, runtime = nets.frame_predictor(model, tta)
        views = 2 if tta == "flip" else 1
        out[name] = (predict, runtime.name, 1, views * gflops(ensemble if model == "own" else fast), False)
    member = nets.ensemble_members(ensemble)[0]
    out["one member of the ensemble, single pass"] = (nets.TFLitePredictor(nets.to_tflite(member, "dynamic"), "none"),
                                                      "tflite dynamic", 1, gflops(member), False)
    predict, runtime, _, cost, _ = out["fast model, single pass"]
    out["fast model, mirror on every other frame"] = (predict, runtime, 1, cost, True)
    out["fast model, single pass, every 2nd frame"] = (predict, runtime, 2, cost / 2, False)
    out["fast model, single pass, 2 frames per call"] = (predict, runtime, -2, cost, False)  # every < 0: a batch
    return out


def instruction_sets(video):
    """ISA_PROBE's milliseconds with this CPU's instructions and with AVX2 at most."""
    import json
    import os
    import subprocess
    out = {}
    for label, extra in (("this CPU", {}), ("AVX-512 off (oneDNN, OpenCV)", AVX2_ONLY)):
        result = subprocess.run([sys.executable, "-c", ISA_PROBE, str(video)], capture_output=True, text=True,
                                env={**os.environ, **extra, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if result.returncode:
            raise UserError(f"the instruction-set probe failed: {result.stderr.strip()[-300:]}")
        out[label] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  {label}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out[label].items()), flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    videos = sorted(args.media.glob("*.mp4"))
    if not videos:
        raise UserError(f"no videos (*.mp4) in {args.media}: pass --media")
    data = fer2013.load_prepared()  # fail early: say to run preprocess.py
    check_folder(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        videos.append(make_crowd_video(args.media, Path(tmp) / "five_faces.mp4"))
        print(f"reading {len(videos)} videos as the stream reads them", flush=True)
        crops = {video.name: stream_crops(video) for video in videos}
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python scripts/measure/stream_candidates.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "candidates": {}}
    x, y = data["x_test"], data["y_test"].astype(int)
    reference = None
    found = candidates()
    reference_gflops = found["full ensemble, mirror (the reference)"][3]
    for name, (predict, runtime, every, cost, alternate) in found.items():
        lines = {video: per_second_lines(frames, predict, max(every, 1), alternate) for video, frames in crops.items()}
        reference = reference or lines
        pooled = {(video, *k): v for video in lines for k, v in lines[video].items()}
        pooled_reference = {(video, *k): v for video in reference for k, v in reference[video].items()}
        proba = np.concatenate([predict(x[i:i + 256]) for i in range(0, len(x), 256)])
        if alternate:  # a photo gets both views
            proba = (proba + np.concatenate([predict(x[i:i + 256, :, ::-1]) for i in range(0, len(x), 256)])) / 2
        ms = (nets.per_face_ms(predict, calls=200) / every if every > 0 else
              nets.per_face_ms(predict, calls=200, faces=-every))
        row = {"runtime": runtime, "every": every, "ms_per_face": ms,
               "gflops_per_face": cost,
               "avx2_host_ms_estimate": AVX2_HOST_ENSEMBLE_MIRROR_MS * cost / reference_gflops,
               "test_accuracy": float((proba.argmax(1) == y).mean()),
               "agreement": agreement(pooled, pooled_reference),
               "per_video": {video: agreement(lines[video], reference[video]) for video in lines}}
        results["candidates"][name] = row
        a = row["agreement"]
        print(f"  {name:<42} {row['ms_per_face']:.3f} ms per face ({runtime}; {cost:.3f} GFLOPs, about "
              f"{row['avx2_host_ms_estimate']:.1f} ms on the issue's AVX2 host), test {row['test_accuracy']:.2%}, "
              f"same emotion on {a['same_emotion']:.1%} of {a['lines']} lines, percentages {a['mean_points']:.1f} "
              f"points apart on average (at most {a['max_points']})", flush=True)
    # Every 2nd frame and batches across frames are measured to show what they would buy; the
    # stream classifies each frame as it comes, so only whole classifiers are chosen from.
    results["instruction_sets"] = instruction_sets(videos[0])
    eligible = {n: r for n, r in results["candidates"].items()
                if r["every"] == 1 and r["agreement"]["same_emotion"] >= MIN_AGREEMENT}
    results["chosen"] = min(eligible, key=lambda n: eligible[n]["ms_per_face"])
    print(f"the cheapest candidate agreeing on at least {MIN_AGREEMENT:.0%} of the lines: {results['chosen']}")
    write_json(args.out / "stream_candidates.json", results)
    write_text(args.out / "stream_candidates.md", markdown(results))
    print(f"wrote {args.out / 'stream_candidates.json'} and stream_candidates.md")
    return 0


def markdown(results):
    lines = [f"Measured {results['date']} on {machine_line(results['machine'])} by `{results['command']}`.", "",
             "| stream classifier | ms per face here | runtime | GFLOPs per face | ms per face on the issue's AVX2 host, "
             "estimated | FER2013 test accuracy (one frame) | per-second lines with the full ensemble's emotion | "
             "percentage points apart, mean (max) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["candidates"].items():
        a = r["agreement"]
        chosen = " **(chosen)**" if name == results["chosen"] else ""
        lines.append(f"| {name}{chosen} | {r['ms_per_face']:.3f} | {r['runtime']} | {r['gflops_per_face']:.3f} | "
                     f"{r['avx2_host_ms_estimate']:.1f} | {r['test_accuracy']:.2%} | "
                     f"{a['same_emotion']:.1%} of {a['lines']} | {a['mean_points']:.1f} ({a['max_points']}) |")
    isa = results.get("instruction_sets", {})
    if isa:
        names = list(next(iter(isa.values())))
        lines += ["", "| Keras and YuNet, ms (per face; per frame for YuNet) | " + " | ".join(isa) + " |",
                  "|---|" + "---|" * len(isa)]
        lines += [f"| {n} | " + " | ".join(f"{isa[label][n]:.2f}" for label in isa) + " |" for n in names]
        lines += ["", "TensorFlow Lite's XNNPACK cannot be told to leave AVX-512 aside; oneDNN (TensorFlow's "
                  "Keras path) and OpenCV (YuNet) can (ONEDNN_MAX_CPU_ISA=AVX2, OPENCV_CPU_DISABLE=AVX512-SKX)."]
    lines += ["", f"The AVX2 estimate scales the full ensemble's {AVX2_HOST_ENSEMBLE_MIRROR_MS} ms per face with the "
              "mirror, measured on the issue's AVX2 host (2 cores of an AMD EPYC, no AVX-512), by each candidate's "
              "share of the operations: there every TensorFlow Lite kind ran at about the same rate (int8 10.3, "
              "float32 13.8 ms)."]
    lines += ["", f"The rule: the cheapest classifier whose lines agree on at least {MIN_AGREEMENT:.0%}; the rows "
              "for every 2nd frame and for two frames per call show what those schedules would buy (the stream "
              "classifies each frame as it comes).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
