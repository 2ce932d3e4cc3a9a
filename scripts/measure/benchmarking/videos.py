"""End-to-end frames per second on videos (decode, detect, crop, classify every frame):
our predict_live_stream.py, run as a user runs it, by default and with the full ensemble,
against fer's Video.analyze(); how far the two streams' per-second lines differ; and the
five-face video tiled from the shared one-face videos."""
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from expressions import ROOT, UserError
from expressions.video import tile_videos

PREDICT_LIVE_STREAM = ROOT / "scripts" / "predict_live_stream.py"

# The two streams measured, as options of predict_live_stream.py. The default is whatever
# the script does with none: what a user gets. The full ensemble is the three networks
# averaged with the mirror image, the stream's classifier before the fast model.
DEFAULT_STREAM = ()
FULL_ENSEMBLE = ("--model", "own", "--tta", "flip")

# Five faces at once, tiled from the shared one-face videos: (file, start second, mirrored).
CROWD = [("liveportrait_d10.mp4", 0, False), ("liveportrait_d6.mp4", 0, False), ("fer_woman2.mp4", 0, False),
         ("liveportrait_d6.mp4", 15, True), ("liveportrait_d10.mp4", 7, True)]


def make_crowd_video(media: Path, path: Path) -> Path:
    """A 640x480, 10-second video of five faces (CROWD), made from the shared videos."""
    return tile_videos([(media / name, start, mirrored) for name, start, mirrored in CROWD], path)


def stream_defaults():
    """(model, tta) that predict_live_stream.py runs with no options, read from its own
    parser, so that the benchmark names and checks what the script really defaults to."""
    spec = importlib.util.spec_from_file_location("predict_live_stream", PREDICT_LIVE_STREAM)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args([])
    return args.model, args.tta


def our_video_run(video: Path, options=DEFAULT_STREAM):
    """predict_live_stream.py on a video with `options`, as a user runs it. Returns its
    frames and FPS (its own figure, which leaves out the TensorFlow start-up, read from its
    --json file), what classified the faces (the model, tta, runtime and the runtime's
    reason it reports there), and its per-second lines as {(time, face): (emotion, percent)}."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "run.json"
        result = subprocess.run([sys.executable, str(PREDICT_LIVE_STREAM), "--source", str(video), *options,
                                 "--json", str(figures)], capture_output=True, text=True)
        if result.returncode or not figures.exists():
            raise UserError(f"predict_live_stream.py {' '.join(options)} failed on {video}: "
                            f"{result.stderr.strip()[-300:]}")
        run = json.loads(figures.read_text())
    lines = {(m[1], m[4]): (m[2], int(m[3])) for m in
             re.finditer(r"^(\S+) : (\w+) , (\d+)%(.*)$", result.stdout, re.MULTILINE)}
    stream = {"options": " ".join(options)}
    stream.update({key: run[key] for key in ("model", "tta", "runtime", "classifier") if key in run})
    return {"frames": run["frames"], "fps": run["fps"], "stream": stream, "lines": lines}


def agreement(lines, reference):
    """How far per-second lines {(time, face): (emotion, percent)} agree with the
    reference's: the lines of both, how many name the same emotion, and by how many points
    the percentage differs where they do (mean and largest)."""
    shared = [k for k in reference if k in lines]
    points = [abs(lines[k][1] - reference[k][1]) for k in shared if lines[k][0] == reference[k][0]]
    return {"lines": len(reference), "lines_matched": len(shared), "same_emotion_lines": len(points),
            "same_emotion": len(points) / len(shared) if shared else None,
            "mean_points": sum(points) / len(points) if points else None, "max_points": max(points, default=0)}


def pooled_agreement(agreements):
    """agreement() over all the videos' lines together."""
    matched = sum(a["lines_matched"] for a in agreements)
    same = sum(a["same_emotion_lines"] for a in agreements)
    points = sum(a["mean_points"] * a["same_emotion_lines"] for a in agreements if a["same_emotion_lines"])
    return {"lines": sum(a["lines"] for a in agreements), "lines_matched": matched, "same_emotion_lines": same,
            "same_emotion": same / matched if matched else None, "mean_points": points / same if same else None,
            "max_points": max((a["max_points"] for a in agreements), default=0)}


def fer_video_fps(Video, detector, video: Path, frames: int):
    """fer's own video path, Video.analyze() on every frame, without writing files."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        Video(str(video), outdir=tmp).analyze(detector, display=False, save_frames=False, save_video=False,
                                              annotate_frames=False, zip_images=False, output="pandas")
        return frames / (time.perf_counter() - start)


def video_speed(detector, Video, videos, repeats, default_options=DEFAULT_STREAM):
    """Per video: the FPS of the default stream, of the full ensemble (both with the default
    face search) and of fer, the fastest of `repeats` runs each; and how far the default
    stream's per-second lines are from the full ensemble's. default_options stands in for
    the default stream while its model is not made yet (e.g. --model own --tta none)."""
    out = {}
    for video in videos:
        runs = {"default": [], "full_ensemble": [], "fer": []}
        for _ in range(repeats):  # alternate, so all see the same machine load
            default = our_video_run(video, default_options)
            full = our_video_run(video, FULL_ENSEMBLE)
            runs["default"].append(default["fps"])
            runs["full_ensemble"].append(full["fps"])
            runs["fer"].append(fer_video_fps(Video, detector, video, default["frames"]))
        fps = {name: max(r) for name, r in runs.items()}
        agreed = agreement(default["lines"], full["lines"])  # the lines do not depend on the machine load
        out[video.name] = {"frames": default["frames"], "faces": len({face for _, face in full["lines"]}),
                           "default_fps": fps["default"], "full_ensemble_fps": fps["full_ensemble"],
                           "fer_fps": fps["fer"], "default_over_fer": fps["default"] / fps["fer"],
                           "full_ensemble_over_fer": fps["full_ensemble"] / fps["fer"],
                           **{f"{name}_runs": r for name, r in runs.items()},
                           "default_stream": default["stream"], "full_ensemble_stream": full["stream"],
                           "agreement": agreed}
        same = "n/a" if agreed["same_emotion"] is None else f"{agreed['same_emotion']:.1%}"
        print(f"  {video.name:<24} default {fps['default']:.1f} FPS ({default['stream'].get('runtime', '?')}), "
              f"full ensemble {fps['full_ensemble']:.1f}, fer {fps['fer']:.1f}: "
              f"{fps['default'] / fps['fer']:.2f}x fer; per-second lines {same} of {agreed['lines']} the same "
              f"emotion as the full ensemble's", flush=True)
    return out
