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
Speed figures go to stderr at the end (and to --json).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, PREPROCESSING_TEST_DIR, UserError, run_cli
from expressions import model as nets
from expressions import plots
from expressions.crops import add_crop_option
from expressions.faces import DETECT_EVERY, DETECT_WIDTH, add_detector_option
from expressions.pipeline import EmotionReader, StreamReader, draw_faces, second_record, timeline_csv
from expressions.outputs import check_file, write_json, write_text
from expressions.video import VideoFile, check_video_path, open_video, video_fps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0",
                   help="webcam index, or a video file path or stream URL (default: %(default)s, the first webcam)")
    p.add_argument("--fallback", type=Path, default=PREPROCESSING_TEST_DIR / "input_video.mp4",
                   help="video to read when the webcam cannot be opened (default: %(default)s)")
    nets.add_model_option(p)
    nets.add_tta_option(p, default="flip", why="; not flip+shift as elsewhere: a stream classifies every "
                        "face of every frame, flip costs 2 views per face instead of 10, and the per-second "
                        "average over 25-30 frames already smooths what the extra views would")
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
                        "per-second lines within a point or two (benchmark.py) (default: %(default)s)")
    p.add_argument("--save-video", type=Path, default=None,
                   help="annotated video (.mp4 or .avi): box, emotion, probability per face (default: none)")
    p.add_argument("--csv", type=Path, default=None,
                   help="per-second timeline: time, face id, box, 7 probabilities, valence, arousal (default: none)")
    p.add_argument("--plot", type=Path, default=None, help="emotion-timeline figure (.png) (default: none)")
    p.add_argument("--json", type=Path, default=None,
                   help="run figures as JSON: source, frames, seconds of video, elapsed seconds, FPS (default: none)")
    return p.parse_args(argv)


def open_source(args):
    """The capture, whether it is live, and its name; falls back from a missing webcam to the file."""
    if args.source.isdigit():
        cap = open_video(int(args.source))
        if cap is not None:
            return cap, True, f"webcam {args.source}"
        print(f"No webcam at index {args.source}: reading the recorded video {args.fallback} instead",
              file=sys.stderr, flush=True)
        source = args.fallback
    else:
        source = args.source
    is_url = "://" in str(source)
    if not is_url and not Path(source).is_file():
        raise UserError(f"video not found: {source}")
    cap = open_video(str(source))
    if cap is None:
        raise UserError(f"cannot read video {source}: not a video OpenCV can decode")
    return cap, is_url, str(source)


def print_second(record):
    """One second's lines, the brief's format."""
    print("Preprocessing ...")
    faces = record["faces"]
    if not faces:
        print(f"{record['time']}s : no face", flush=True)
    for face in faces:
        suffix = f" (face {face['id']})" if len(faces) > 1 else ""
        print(f"{record['time']}s : {face['emotion']} , {int(round(face['probability'] * 100))}%{suffix}", flush=True)


def run(args):
    # Every output is checked before the stream starts, not after it ends.
    if args.save_video:
        check_video_path(args.save_video)
    for path, what in ((args.csv, "CSV file"), (args.plot, "plot"), (args.json, "JSON file")):
        if path:
            check_file(path, what)
    print("Reading video stream ...", flush=True)
    cap, live, name = open_source(args)
    predict, runtime = nets.frame_predictor(args.model, args.tta, args.runtime)
    reader = EmotionReader(predict, args.detector, args.crop, args.detect_width, args.detect_every)
    fps = video_fps(cap)
    wall_clock = live or args.realtime
    stream = StreamReader(reader)
    video = VideoFile(args.save_video, fps) if args.save_video else None
    records, frames, started = [], 0, time.time()

    def report(ended):
        if ended:
            records.append(second_record(*ended, clock=started if wall_clock else None))
            print_second(records[-1])

    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            t_video = frames / fps
            if args.realtime and not live:  # play the file at its own speed
                time.sleep(max(0.0, t_video - (time.time() - started)))
            t = (time.time() - started) if wall_clock else t_video
            if args.max_seconds is not None and t >= args.max_seconds:
                break
            faces, ids, proba, ended = stream.read(frame, t)
            report(ended)
            if video:
                video.write(draw_faces(frame, [f.box for f in faces], proba, ids))
            frames += 1
    except KeyboardInterrupt:
        pass
    finally:
        report(stream.finish())
        cap.release()
        if video:
            video.close()
    elapsed = time.time() - started
    if frames == 0:
        raise UserError(f"no frame could be read from {name}")
    if args.csv:
        write_text(args.csv, timeline_csv(records))
    if args.plot:
        timeline = [(r["second"], f["id"], np.array([f["probabilities"][e] for e in EMOTIONS]), f["valence"],
                     f["arousal"]) for r in records for f in r["faces"]]
        plots.timeline(timeline, args.plot, seconds=len(records))
        if not timeline:
            print(f"no face found in {name}: the plot {args.plot} says so", file=sys.stderr)
    video_seconds = frames / fps
    print(f"{frames} frames ({video_seconds:.1f} s of video) in {elapsed:.1f} s: {frames / elapsed:.1f} FPS, "
          f"{video_seconds / elapsed:.1f}x real time", file=sys.stderr)
    if args.json:
        write_json(args.json, {"source": name, "frames": frames, "video_seconds": video_seconds,
                               "elapsed_seconds": elapsed, "fps": frames / elapsed, "tta": args.tta,
                               "runtime": runtime, "detector": args.detector})
    return 0


if __name__ == "__main__":
    run_cli(lambda: run(parse_args(sys.argv[1:])))
