"""Every face in a collection of photos and videos, in one command: on this machine's cores,
or on a Ray cluster. Resumable: run the same command again to finish what is left.

    python scripts/analyze.py photos/ videos/ --out results/collection
    python scripts/analyze.py list.txt --out DIR --csv --workers 2
    python scripts/analyze.py /shared/sessions --out /shared/out --address HEAD:6379   # a Ray cluster

INPUTS are photos, videos, folders (searched recursively; other files are left alone) and
text files (.txt, .lst) listing inputs one per line. Photos are read as `predict.py PHOTO`
reads them (--model, --tta), videos as `predict_live_stream.py --source VIDEO` does
(--stream-model, --stream-tta). Written to --out, each file atomically:
    faces.parquet   one row per face per photo, and per face per second of a video
    inputs.parquet  one row per input: done, no face or error (with the reason), frames,
                    seconds, time taken
    parts/          the finished inputs, merged into the two files at the end
A re-run with the same --out skips the inputs done with the same size, modification
time, model and options; errors are tried again. On a cluster, every node must see the
inputs at the same paths (shared storage) and have this toolkit installed there.
"""
import argparse
import sys
from pathlib import Path

from expressions import UserError, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option
from expressions.faces import DETECT_EVERY, DETECT_WIDTH, add_detector_option, add_max_megapixels_option


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path,
                   help="photos, videos, folders searched recursively, or .txt/.lst files listing them")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: faces.parquet, inputs.parquet and parts/ (its earlier parts are reused)")
    p.add_argument("--csv", action="store_true", help="also write faces.csv and inputs.csv")
    p.add_argument("--workers", type=int, default=None,
                   help="processes on this machine, each loading the models once (default: one per core)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster to use instead (HOST:PORT of its head, or auto; the RAY_ADDRESS "
                        "environment variable too): needs `pip install -e .[cluster]` (default: this machine)")
    nets.add_model_option(p, why="; the model of photos, as predict.py")
    nets.add_tta_option(p, why="; of photos, as predict.py")
    p.add_argument("--stream-model", default="fast",
                   help="the model of videos, as predict_live_stream.py: fast, own or a .pkl (default: %(default)s)")
    nets.add_tta_option(p, default=nets.ALTERNATE, stream=True, flag="--stream-tta",
                        why="; of videos, as predict_live_stream.py")
    add_detector_option(p)
    add_crop_option(p)
    add_max_megapixels_option(p)
    p.add_argument("--detect-every", type=int, default=DETECT_EVERY,
                   help="videos: search for faces in every Nth frame, as predict_live_stream.py (default: %(default)s)")
    p.add_argument("--detect-width", type=int, default=DETECT_WIDTH,
                   help="videos: the frame width the face search runs at (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    import os
    args = parse_args(argv)
    from expressions.collection import Settings, analyze_collection
    settings = Settings(str(args.model), args.tta, str(args.stream_model), args.stream_tta, args.detector, args.crop,
                        args.detect_every, args.detect_width, args.max_megapixels)
    faces, inputs = analyze_collection(args.inputs, args.out, args.workers, args.address or os.environ.get(
        "RAY_ADDRESS"), args.csv, settings)
    counts = inputs.status.value_counts()
    print(f"{len(inputs):,} inputs: {counts.get('done', 0):,} done, {counts.get('no face', 0):,} without a face, "
          f"{counts.get('error', 0):,} errors; {len(faces):,} face rows")
    for row in inputs[inputs.status == "error"].itertuples():  # UserError: one printable line, whatever the name
        print(f"error: {UserError(f'{row.input}: {row.reason}')}", file=sys.stderr)
    written = ["faces.parquet", "inputs.parquet"] + (["faces.csv", "inputs.csv"] if args.csv else [])
    print("wrote " + ", ".join(str(args.out / name) for name in written))
    return 1 if counts.get("error", 0) else 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
