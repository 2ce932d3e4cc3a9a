"""End-to-end frames per second on videos (decode, detect, crop, classify every frame):
our predict_live_stream.py, run as a user runs it, against fer's Video.analyze(); and the
five-face video tiled from the shared one-face videos."""
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from expressions import ROOT, UserError
from expressions.faces import DETECT_EVERY
from expressions.video import tile_videos

PREDICT_LIVE_STREAM = ROOT / "scripts" / "predict_live_stream.py"

# Five faces at once, tiled from the shared one-face videos: (file, start second, mirrored).
CROWD = [("liveportrait_d10.mp4", 0, False), ("liveportrait_d6.mp4", 0, False), ("fer_woman2.mp4", 0, False),
         ("liveportrait_d6.mp4", 15, True), ("liveportrait_d10.mp4", 7, True)]


def make_crowd_video(media: Path, path: Path) -> Path:
    """A 640x480, 10-second video of five faces (CROWD), made from the shared videos."""
    return tile_videos([(media / name, start, mirrored) for name, start, mirrored in CROWD], path)


def our_video_run(video: Path, detect_every: int):
    """predict_live_stream.py on a video, as a user runs it: its FPS (its own figure, which
    leaves out the TensorFlow start-up, read from its --json file) and its per-second lines
    as {(time, face): (emotion, percent)}."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "run.json"
        result = subprocess.run([sys.executable, str(PREDICT_LIVE_STREAM), "--source", str(video),
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
