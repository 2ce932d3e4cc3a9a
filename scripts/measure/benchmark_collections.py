"""analyze.py on this machine's cores and on a two-node Ray cluster, beside the scripts a
user would otherwise loop over, in one run.

    python scripts/measure/benchmark_collections.py --media ../shared/media   # about 5 minutes, alone

The work: the labelled photos of --media copied --photo-copies times, and its videos
copied --video-copies times, into a temporary folder. Each is read, whole commands timed
by the wall clock (start-up included, as a user waits for it):
  - photos by `predict.py PHOTOS... --csv`, one process, then two side by side with half
    the photos each (what two processes get from this host's cores); videos by
    `predict_live_stream.py --source VIDEO`, one process per video, one after another;
  - `analyze.py` with --workers 1 and --workers 2;
  - `analyze.py --address` on a two-node Ray cluster on 127.0.0.1 (1 CPU per node,
    started in a network and PID namespace of its own; its start-up is not timed).
Reports photos per second, video frames per second (by the wall clock, and by the busiest
worker's reading time, start-up left out), the scaling from 1 to 2 workers, each worker's
peak memory, and what 2,000 hours of 30 FPS video would take at the reading rate of one of
two workers. Writes results/benchmarks/collections.json and .md, with the CPU line.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from expressions import RESULTS_DIR, ROOT, UserError, machine, machine_line, run_cli
from expressions.outputs import check_folder, write_json, write_text

from benchmarking import cluster

HOURS = 2000  # the study: 2,000 hours of recorded sessions at 30 frames a second


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, required=True,  # test media are not the toolkit's: no default
                   help="folder with face videos (*.mp4) and photos (photos/*.jpg)")
    p.add_argument("--photo-copies", type=int, default=20, help="copies of each photo (default: %(default)s)")
    p.add_argument("--video-copies", type=int, default=2, help="copies of each video (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "benchmarks",
                   help="folder for collections.json and collections.md (default: %(default)s)")
    return p.parse_args(argv)


def script(name, *args):
    return [sys.executable, str(ROOT / "scripts" / name), *map(str, args)]


def timed(command):
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise UserError(f"{Path(command[1]).name} failed: {result.stderr.strip().splitlines()[-1:]}")
    return time.time() - started


def figures(out, elapsed):
    """What an analyze.py output folder says of its run: photos, frames, workers, their
    peak memory, and `reading`: the busiest worker's time on its inputs (the start-up and
    the models' loading left out: what a long job's rate tends to)."""
    inputs = pd.read_parquet(out / "inputs.parquet")
    photos, videos = inputs[inputs.kind == "photo"], inputs[inputs.kind == "video"]
    return {"elapsed": elapsed, "reading": float(inputs.groupby("worker").elapsed.sum().max()),
            "photos": len(photos), "frames": int(videos.frames.sum()),
            "workers": int(inputs.worker.nunique()), "worker_peak_mb": float(inputs.worker_peak_mb.max())}


def main(argv=None):
    args = parse_args(argv)
    photos = sorted((args.media / "photos").glob("*.jpg"))
    videos = sorted(args.media.glob("*.mp4"))
    if not photos or not videos:
        raise UserError(f"no photos (photos/*.jpg) or videos (*.mp4) in {args.media}")
    check_folder(args.out)
    why_not = cluster.unavailable()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python scripts/measure/benchmark_collections.py " + " ".join(
                   map(str, sys.argv[1:] if argv is None else argv)), "machine": machine(), "runs": {}}
    print(f"on {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="collections") as tmp:
        tmp = Path(tmp)
        for k in range(args.photo_copies):
            for photo in photos:
                (tmp / "photos").mkdir(exist_ok=True)
                shutil.copy(photo, tmp / "photos" / f"{photo.stem}-{k}{photo.suffix}")
        for k in range(args.video_copies):
            for video in videos:
                (tmp / "videos").mkdir(exist_ok=True)
                shutil.copy(video, tmp / "videos" / f"{video.stem}-{k}{video.suffix}")
        all_photos, all_videos = sorted((tmp / "photos").iterdir()), sorted((tmp / "videos").iterdir())
        runs = results["runs"]
        print(f"{len(all_photos)} photos, {len(all_videos)} videos", flush=True)
        elapsed = timed(script("predict.py", *all_photos, "--csv", tmp / "photos.csv"))
        runs["predict.py, one process"] = {"elapsed": elapsed, "photos": len(all_photos)}
        print(f"  predict.py: {len(all_photos) / elapsed:.1f} photos/s", flush=True)
        # The host's own ceiling for two workers: two predict.py side by side, half the photos each.
        started = time.time()
        halves = [subprocess.Popen(script("predict.py", *all_photos[k::2], "--csv", tmp / f"half{k}.csv"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in (0, 1)]
        if any(half.wait() for half in halves):
            raise UserError("predict.py failed on half of the photos")
        runs["predict.py, two processes side by side"] = {"elapsed": time.time() - started, "photos": len(all_photos)}
        print(f"  two predict.py side by side: {len(all_photos) / (time.time() - started):.1f} photos/s", flush=True)
        elapsed, frames = 0.0, 0
        for video in all_videos:
            elapsed += timed(script("predict_live_stream.py", "--source", video, "--json", tmp / "run.json"))
            frames += pd.read_json(tmp / "run.json", typ="series")["frames"]
        runs["predict_live_stream.py, one process per video"] = {"elapsed": elapsed, "frames": int(frames)}
        print(f"  predict_live_stream.py: {frames / elapsed:.1f} frames/s", flush=True)
        for kind in ("photos", "videos"):
            for workers in (1, 2):
                out = tmp / f"{kind}-{workers}"
                elapsed = timed(script("analyze.py", tmp / kind, "--out", out, "--workers", workers))
                runs[f"analyze.py {kind}, {workers} worker{'s' * (workers > 1)}"] = figures(out, elapsed)
                print(f"  analyze.py {kind}, {workers} workers: {rate(runs, kind, workers):.1f} "
                      f"{'photos' if kind == 'photos' else 'frames'}/s", flush=True)
        if why_not:
            print(f"  no cluster run: {why_not}", flush=True)
            results["cluster"] = why_not
        else:
            commands = [script("analyze.py", tmp / kind, "--out", tmp / f"{kind}-cluster", "--address",
                               f"127.0.0.1:{cluster.PORT}") for kind in ("photos", "videos")]
            done = cluster.run_on_two_nodes(commands)
            for kind, run in zip(("photos", "videos"), done["runs"]):
                if run["returncode"]:
                    raise UserError(f"analyze.py on the cluster failed: {run['stderr'][-500:]}")
                runs[f"analyze.py {kind}, two-node cluster"] = figures(tmp / f"{kind}-cluster", run["elapsed"])
            print(f"  cluster: {runs['analyze.py photos, two-node cluster']['photos'] / runs['analyze.py photos, two-node cluster']['elapsed']:.1f} photos/s, "
                  f"{runs['analyze.py videos, two-node cluster']['frames'] / runs['analyze.py videos, two-node cluster']['elapsed']:.1f} frames/s", flush=True)
    results["scaling"] = {kind: rate(runs, kind, 2) / rate(runs, kind, 1) for kind in ("photos", "videos")}
    results["scaling_reading"] = {kind: rate(runs, kind, 2, "reading") / rate(runs, kind, 1, "reading")
                                  for kind in ("photos", "videos")}
    alone, side_by_side = runs["predict.py, one process"], runs["predict.py, two processes side by side"]
    results["scaling"]["predict.py, two processes against one"] = alone["elapsed"] / side_by_side["elapsed"]
    per_worker = rate(runs, "videos", 2, "reading") / 2
    results["2000_hours"] = {"frames": HOURS * 3600 * 30, "frames_per_second_per_worker": per_worker,
                             "core_hours": HOURS * 3600 * 30 / per_worker / 3600}
    print(f"scaling 1 -> 2 workers: photos {results['scaling']['photos']:.2f}x, videos "
          f"{results['scaling']['videos']:.2f}x (reading only {results['scaling_reading']['photos']:.2f}x, "
          f"{results['scaling_reading']['videos']:.2f}x; two predict.py side by side: "
          f"{results['scaling']['predict.py, two processes against one']:.2f}x); {HOURS:,} hours of 30 FPS video: about "
          f"{results['2000_hours']['core_hours']:,.0f} core-hours at {per_worker:.0f} frames/s per worker")
    write_json(args.out / "collections.json", results)
    write_text(args.out / "collections.md", markdown(results))
    print(f"wrote {args.out / 'collections.json'} and collections.md")
    return 0


def rate(runs, kind, workers, clock="elapsed"):
    """Photos or frames per second of an analyze.py run, by the wall clock (elapsed) or by
    its busiest worker's reading time."""
    run = runs[f"analyze.py {kind}, {workers} worker{'s' * (workers > 1)}"]
    return (run["photos"] if kind == "photos" else run["frames"]) / run[clock]


def markdown(results):
    lines = [f"Measured {results['date']} on {machine_line(results['machine'])} by `{results['command']}`.", "",
             "| run | photos/s | video frames/s | the same, reading only | peak memory per worker, MB |",
             "|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        photos = f"{run['photos'] / run['elapsed']:.1f}" if run.get("photos") else ""
        frames = f"{run['frames'] / run['elapsed']:.1f}" if run.get("frames") else ""
        reading = (f"{(run.get('photos') or run['frames']) / run['reading']:.1f}" if "reading" in run else "")
        memory = f"{run['worker_peak_mb']:.0f}" if "worker_peak_mb" in run else ""
        lines.append(f"| {name} | {photos} | {frames} | {reading} | {memory} |")
    s, r, h = results["scaling"], results["scaling_reading"], results["2000_hours"]
    lines += ["", "Whole commands are timed by the wall clock, start-up included; \"reading only\" divides by the "
              "busiest worker's time on its inputs (its start-up and its models' loading left out; on the "
              "cluster the first input of each worker still includes them): the rate a long job tends to.",
              "", f"Scaling from 1 to 2 workers: photos {s['photos']:.2f}x, videos {s['videos']:.2f}x by the wall "
              f"clock; reading only, photos {r['photos']:.2f}x, videos {r['videos']:.2f}x. Two predict.py "
              f"processes side by side, half the photos each, against one with all of them: "
              f"{s['predict.py, two processes against one']:.2f}x (what two processes get from this host's cores).",
              f"{HOURS:,} hours of 30 FPS video ({h['frames'] / 1e6:,.0f} million frames) at "
              f"{h['frames_per_second_per_worker']:.0f} frames/s per worker: about {h['core_hours']:,.0f} core-hours "
              f"(one worker per core).", ""]
    if isinstance(results.get("cluster"), str):
        lines += [f"No cluster run: {results['cluster']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
