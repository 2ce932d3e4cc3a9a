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
Speed figures go to stderr at the end.
"""
import argparse
import csv
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

import expressions as ex


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0",
                   help="webcam index, or a video file path or stream URL (default: %(default)s, the first webcam)")
    p.add_argument("--fallback", type=Path, default=ex.PREPROCESSING_TEST_DIR / "input_video.mp4",
                   help="video to read when the webcam cannot be opened (default: %(default)s)")
    p.add_argument("--model", default="own",
                   help="model .pkl file, or own / pre_trained for the committed models (default: %(default)s)")
    p.add_argument("--realtime", action="store_true",
                   help="pace a video file like a live stream and print wall-clock times (default: as fast as possible)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds of video (default: until the stream ends; Ctrl-C stops a webcam)")
    p.add_argument("--no-tta", action="store_true", help="no flip averaging (default: average with the mirror image)")
    p.add_argument("--detect-width", type=int, default=ex.DETECT_WIDTH,
                   help="frame width the face search runs at; larger finds smaller faces, slower (default: %(default)s)")
    p.add_argument("--save-video", type=Path, default=None,
                   help="annotated video (.mp4 or .avi): box, emotion, probability per face (default: none)")
    p.add_argument("--csv", type=Path, default=None,
                   help="per-second timeline: time, face id, box, 7 probabilities, valence, arousal (default: none)")
    p.add_argument("--plot", type=Path, default=None, help="emotion-timeline figure (.png) (default: none)")
    return p.parse_args(argv)


def open_source(args):
    """The capture, whether it is live, and its name; falls back from a missing webcam to the file."""
    if args.source.isdigit():
        cap = ex.open_video(int(args.source))
        if cap is not None:
            return cap, True, f"webcam {args.source}"
        print(f"No webcam at index {args.source}: reading the recorded video {args.fallback} instead",
              file=sys.stderr, flush=True)
        source = args.fallback
    else:
        source = args.source
    is_url = "://" in str(source)
    if not is_url and not Path(source).is_file():
        raise ex.UserError(f"video not found: {source}")
    cap = ex.open_video(str(source))
    if cap is None:
        raise ex.UserError(f"cannot read video {source}: not a video OpenCV can decode")
    return cap, is_url, str(source)


class SecondSummary:
    """Collects the probabilities of each face id within one second."""

    MIN_SHARE = 0.3  # a face must be found in 30 % of the second's frames to be reported

    def __init__(self):
        self.proba, self.boxes, self.frames = {}, {}, 0

    def add(self, ids, boxes, proba):
        self.frames += 1
        for i, b, p in zip(ids, boxes, proba):
            self.proba.setdefault(i, []).append(p)
            self.boxes[i] = b

    def faces(self):
        """[(id, mean probabilities, last box, frames)], the most often seen face first.
        Boxes seen in only a few frames are left out: the detector's rare false alarms
        (a patch of background) do not last, real faces do."""
        rows = [(i, np.mean(ps, axis=0), self.boxes[i], len(ps)) for i, ps in self.proba.items()
                if len(ps) >= self.MIN_SHARE * self.frames]
        return sorted(rows, key=lambda r: (-r[3], r[0]))


def emit(second_label, summary, writer_csv, t_second, timeline):
    print("Preprocessing ...")
    faces = summary.faces()
    if not faces:
        print(f"{second_label} : no face", flush=True)
    for face_id, p, box, n in faces:
        k = int(np.argmax(p))
        suffix = f" (face {face_id})" if len(faces) > 1 else ""
        print(f"{second_label} : {ex.EMOTIONS[k]} , {int(round(p[k] * 100))}%{suffix}", flush=True)
        valence, arousal = ex.valence_arousal(p)
        timeline.append((t_second, face_id, p, float(valence), float(arousal)))
        if writer_csv:
            writer_csv.writerow([second_label.rstrip("s"), f"{t_second:.0f}", face_id, *box,
                                 *[f"{v:.4f}" for v in p], f"{valence:.3f}", f"{arousal:.3f}", n])


def plot_timeline(timeline, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seconds_seen = {}
    for row in timeline:
        seconds_seen[row[1]] = seconds_seen.get(row[1], 0) + 1
    ids = sorted(seconds_seen, key=lambda i: -seconds_seen[i])[:4]  # the faces seen longest
    if not ids:
        return
    fig, axes = plt.subplots(len(ids), 1, figsize=(11, 3.2 * len(ids)), squeeze=False, sharex=True)
    for ax, face_id in zip(axes[:, 0], ids):
        rows = [r for r in timeline if r[1] == face_id]
        t = np.array([r[0] for r in rows])
        p = np.array([r[2] for r in rows])
        ax.stackplot(t, p.T, labels=ex.EMOTIONS, step="post", alpha=0.85)
        ax2 = ax.twinx()
        ax2.plot(t, [r[3] for r in rows], "k-", lw=1.5, label="valence")
        ax2.plot(t, [r[4] for r in rows], "k:", lw=1.5, label="arousal")
        ax2.set_ylim(-1, 1)
        ax2.set_ylabel("valence / arousal")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"face {face_id}")
        ax.set_xlabel("second")
        ax.legend(loc="upper left", fontsize=7, ncol=7)
        ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args):
    model = ex.load_model(args.model)
    reader = ex.EmotionReader(model, flip_tta=not args.no_tta, detect_width=args.detect_width)
    print("Reading video stream ...", flush=True)
    cap, live, name = open_source(args)
    fps = ex.video_fps(cap)
    wall_clock = live or args.realtime
    tracker = ex.FaceTracker()
    writer = None
    csv_file = open(args.csv, "w", newline="") if args.csv else None
    writer_csv = csv.writer(csv_file) if csv_file else None
    if writer_csv:
        writer_csv.writerow(["time", "second", "face_id", "x", "y", "w", "h",
                             *[e.lower() for e in ex.EMOTIONS], "valence", "arousal", "frames"])
    timeline, summary, current = [], SecondSummary(), None
    frames, started = 0, time.time()
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
            second = int(t)
            if current is not None and second != current:
                emit(label_for(current, started, wall_clock), summary, writer_csv, current, timeline)
                summary = SecondSummary()
            current = second
            boxes, _, proba = reader(frame)
            ids = tracker.update(boxes, t)
            summary.add(ids, boxes, proba)
            if args.save_video:
                if writer is None:
                    writer = ex.video_writer(args.save_video, fps, (frame.shape[1], frame.shape[0]))
                writer.write(ex.draw_faces(frame, boxes, proba, ids))
            frames += 1
    except KeyboardInterrupt:
        pass
    finally:
        if current is not None:
            emit(label_for(current, started, wall_clock), summary, writer_csv, current, timeline)
        cap.release()
        if writer is not None:
            writer.release()
        if csv_file:
            csv_file.close()
    elapsed = time.time() - started
    if frames == 0:
        raise ex.UserError(f"no frame could be read from {name}")
    if args.plot:
        plot_timeline(timeline, args.plot)
    video_seconds = frames / fps
    print(f"{frames} frames ({video_seconds:.1f} s of video) in {elapsed:.1f} s: {frames / elapsed:.1f} FPS, "
          f"{video_seconds / elapsed:.1f}x real time", file=sys.stderr)
    return 0


def label_for(second, started, wall_clock):
    if wall_clock:
        return datetime.fromtimestamp(started + second).strftime("%H:%M:%S") + "s"
    return ex.format_clock(second)


if __name__ == "__main__":
    ex.run_cli(lambda: run(parse_args(sys.argv[1:])))
