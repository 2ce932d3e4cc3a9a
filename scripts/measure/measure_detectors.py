"""Compare the face detectors: how many of the labelled photos get a face, in how many
milliseconds, and the time per frame and share of frames with a face on each video.

    python scripts/measure/measure_detectors.py --media DIR

Each video frame is searched at --detect-width (the live stream's setting); each photo
as predict.py searches it. Times are medians over all frames or photos, measured one
detector after the other in the same run.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from expressions import UserError, machine_line, run_cli
from expressions.faces import DETECT_WIDTH, DETECTORS, FaceDetector, read_image


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, required=True,  # test media are not the toolkit's: no default
                   help="folder with the videos (*.mp4) and photos/")
    p.add_argument("--detect-width", type=int, default=DETECT_WIDTH,
                   help="frame width the video search runs at (default: %(default)s)")
    return p.parse_args(argv)


def median_ms(detect, images):
    found, times = 0, []
    for image in images:
        start = time.perf_counter()
        found += bool(detect(image))
        times.append((time.perf_counter() - start) * 1000)
    return found, float(np.median(times))


def main(argv=None):
    import cv2
    args = parse_args(argv)
    photos = sorted(p for p in (args.media / "photos").glob("*") if p.suffix.lower() in (".jpg", ".png"))
    videos = sorted(args.media.glob("*.mp4"))
    if not photos or not videos:
        raise UserError(f"no photos or videos in {args.media}: pass --media")
    photo_images = [read_image(p) for p in photos]
    frames = {}
    for video in videos:
        cap, frames[video.name] = cv2.VideoCapture(str(video)), []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames[video.name].append(frame)
    print(f"Measured on {machine_line()}.\n")  # the times depend on the CPU and its flags
    print(f"| detector | photos with a face ({len(photos)}) | ms per photo | "
          + " | ".join(f"{name} ({f[0].shape[1]}x{f[0].shape[0]}): frames with a face, ms per frame"
                       for name, f in frames.items()) + " |")
    print("|---|---|---|" + "---|" * len(frames))
    for name in DETECTORS:
        detector = FaceDetector(name, args.detect_width)
        detector.detect(photo_images[0], still=True)  # warm-up
        found, ms = median_ms(lambda image: detector.detect(image, still=True), photo_images)
        row = f"| {name} | {found} | {ms:.1f} |"
        for video_frames in frames.values():
            found, ms = median_ms(detector.detect, video_frames)
            row += f" {found / len(video_frames):.1%}, {ms:.2f} ms |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
