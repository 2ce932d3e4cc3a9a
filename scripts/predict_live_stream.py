"""Say what every face in a webcam or video feels, once per second.

    python scripts/predict_live_stream.py                      # webcam 0, or the recorded video if none
    python scripts/predict_live_stream.py --source clip.mp4 --save-video out.mp4 --csv out.csv --plot out.png

Output (stdout), as in the brief:
    Reading video stream ...
    Preprocessing ...
    00:00:03s : Happy , 73%
One line per face per second. The probability is the average over all the frames of
that second, so the answer does not flicker. When a second shows several faces, each
line ends with the face's id, stable across seconds: `00:00:03s : Happy , 73% (face 2)`.
A second without a face prints `00:00:03s : no face`. For a webcam the time is the wall
clock; for a file it is the position in the video (or the wall clock with --realtime).
Speed figures go to stderr at the end (and to --json). Outputs never replace an input or a
file this toolkit did not write (refused before the stream starts); its own earlier outputs
are replaced, so a command can be run again.
"""
import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, PREPROCESSING_TEST_DIR, EmotionRecognizer, UserError, run_cli
from expressions import model as nets
from expressions import plots
from expressions.crops import add_crop_option
from expressions.faces import DETECT_EVERY, DETECT_WIDTH, add_detector_option
from expressions.pipeline import TIMELINE_COLUMNS, draw_faces, timeline_csv
from expressions.outputs import check_file, check_user_outputs, write_json, write_text
from expressions.video import VideoFile, check_video_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0",
                   help="webcam index, or a video file path or stream URL (default: %(default)s, the first webcam)")
    p.add_argument("--fallback", type=Path, default=PREPROCESSING_TEST_DIR / "input_video.mp4",
                   help="video to read when the webcam cannot be opened (default: %(default)s)")
    nets.add_model_option(p, default="fast", why=": one network distilled from the committed ensemble for "
                          "streams, a third of its cost, whose per-second lines name the ensemble's emotion on 96 %% "
                          "of the shared videos' seconds (docs/live.md); own is the full ensemble, as predict.py "
                          "reads photos")
    nets.add_tta_option(p, default=nets.ALTERNATE, stream=True, why=": a stream classifies every face of every "
                        "frame, and the per-second average over 25-30 frames holds both views at the cost of one; "
                        "its lines agree with flip's as often (docs/live.md)")
    add_detector_option(p)
    add_crop_option(p)
    nets.add_runtime_option(p)
    p.add_argument("--realtime", action="store_true",
                   help="pace a video file like a live stream and print wall-clock times (default: as fast as possible)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds of video (default: until the stream ends; Ctrl-C stops a webcam)")
    p.add_argument("--detect-width", type=int, default=DETECT_WIDTH,
                   help="frame width the face search runs at; larger finds smaller faces, slower (default: %(default)s)")
    p.add_argument("--detect-every", type=int, default=DETECT_EVERY,
                   help="search for faces in every Nth frame and reuse the faces found in between; each "
                        "frame is still cropped and classified. 2 measured 1.3-1.7x the FPS of 1 with the same "
                        "per-second lines within a point or two (docs/live.md) (default: %(default)s)")
    p.add_argument("--save-video", type=Path, default=None,
                   help="annotated video (.mp4 or .avi): box, emotion, probability per face (default: none)")
    p.add_argument("--csv", type=Path, default=None,
                   help="per-second timeline: time, face id, box, 7 probabilities, valence, arousal (default: none)")
    p.add_argument("--plot", type=Path, default=None, help="emotion-timeline figure, a .png (default: none)")
    p.add_argument("--json", type=Path, default=None,
                   help="run figures as JSON: source, frames, seconds of video, elapsed seconds, FPS (default: none)")
    return p.parse_args(argv)


def open_stream(recognizer, args):
    """The stream: the webcam, or the video file if there is no webcam at that index."""
    if not args.source.isdigit():
        return recognizer.stream(args.source, args.realtime, args.max_seconds, args.detect_every, args.detect_width)
    try:
        return recognizer.stream(int(args.source), args.realtime, args.max_seconds, args.detect_every,
                                 args.detect_width)
    except UserError:
        print(f"No webcam at index {args.source}: reading the recorded video {args.fallback} instead",
              file=sys.stderr, flush=True)
        return recognizer.stream(str(args.fallback), args.realtime, args.max_seconds, args.detect_every,
                                 args.detect_width)


def print_second(second):
    """One second's lines, the brief's format."""
    print("Preprocessing ...")
    if not second.faces:
        print(f"{second.time}s : no face", flush=True)
    for face in second.faces:
        suffix = f" (face {face.id})" if len(second.faces) > 1 else ""
        print(f"{second.time}s : {face.emotion} , {int(round(face.probability * 100))}%{suffix}", flush=True)


def check_outputs(args):
    """Every output checked before the stream starts, not after it ends: writable, not an
    input, and not a file this toolkit did not write (outputs.check_user_outputs)."""
    outputs = [(check_video_path(args.save_video), "video", None)] if args.save_video else []
    for path, what, header in ((args.csv, "CSV file", ",".join(TIMELINE_COLUMNS)), (args.plot, "plot", None),
                               (args.json, "JSON file", None)):
        if path:
            outputs.append((check_file(path, what), what, header))
    if args.plot and args.plot.suffix.lower() != ".png":  # a PNG carries the marker that makes a re-run replace it
        raise UserError(f"cannot write plot {args.plot}: use a .png name")
    inputs = [nets.model_path(args.model), args.fallback] + ([] if args.source.isdigit() else [args.source])
    check_user_outputs(outputs, inputs)


def run(args):
    check_outputs(args)
    print("Reading video stream ...", flush=True)
    recognizer = EmotionRecognizer(args.model, args.detector, args.crop, args.tta, args.runtime)
    print(f"classifier: {nets.model_path(args.model).name}, {args.tta} test-time augmentation, "
          f"{recognizer.runtime_reason}", file=sys.stderr, flush=True)
    stream = open_stream(recognizer, args)
    signal.signal(signal.SIGINT, lambda signum, frame: stream.stop())  # Ctrl-C: the last second still printed
    video = VideoFile(args.save_video, stream.fps) if args.save_video else None
    seconds, started, finished = [], time.time(), False
    try:
        for frame in stream:
            for second in frame.seconds:
                seconds.append(second)
                print_second(second)
            if video:
                video.write(draw_faces(frame.image, frame.faces))
        finished = True  # Ctrl-C ends the stream normally: what was read is kept
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if video:
            video.close(keep=finished)  # a failure mid-way leaves no half video, nor a file replaced by one
    elapsed, frames = time.time() - started, stream.frames
    if frames == 0:
        raise UserError(f"no frame could be read from {stream.name}")
    if args.csv:
        write_text(args.csv, timeline_csv(seconds))
    if args.plot:
        timeline = [(s.second, f.id, np.array([f.probabilities[e] for e in EMOTIONS]), f.valence, f.arousal)
                    for s in seconds for f in s.faces]
        plots.timeline(timeline, args.plot, seconds=len(seconds))
        if not timeline:
            print(f"no face found in {stream.name}: the plot {args.plot} says so", file=sys.stderr)
    video_seconds = frames / stream.fps
    skipped = f", {stream.skipped} frames skipped to keep up" if stream.skipped else ""
    print(f"{frames} frames ({video_seconds:.1f} s of video) in {elapsed:.1f} s: {frames / elapsed:.1f} FPS, "
          f"{video_seconds / elapsed:.1f}x real time{skipped}", file=sys.stderr)
    if args.json:
        write_json(args.json, mark=True, obj={"source": stream.name, "frames": frames, "video_seconds": video_seconds,
                               "elapsed_seconds": elapsed, "fps": frames / elapsed, "skipped_frames": stream.skipped,
                               "model": nets.model_path(args.model).name, "tta": args.tta,
                               "runtime": recognizer.runtime, "classifier": recognizer.runtime_reason,
                               "detector": args.detector})
    return 0


if __name__ == "__main__":
    run_cli(lambda: run(parse_args(sys.argv[1:])))
