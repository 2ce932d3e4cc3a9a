"""Prepare FER2013 for training and evaluation.

Reads the raw data (Kaggle fer2013.csv, the course's train.csv + test_with_emotions.csv,
or the challenge zip; from data/ or --source PATH), validates every row, and writes:
  data/train.csv, data/test.csv      the course format (test = PublicTest + PrivateTest)
  data/fer2013_prepared.npz          uint8 arrays with a fixed validation split carved from Training
  results/class_distribution.png     images per class and split (with --data-dir DIR: DIR/class_distribution.png)
Re-running is a no-op when the inputs and options are unchanged.

    python scripts/preprocess.py
    python scripts/preprocess.py --video face.mp4     # the preprocessing test: one crop per second
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from expressions import DATA_DIR, EMOTIONS, PREPROCESSING_TEST_DIR, RESULTS_DIR, UserError, run_cli
from expressions import data as fer2013
from expressions import plots
from expressions.crops import crop_face
from expressions.faces import FaceDetector, add_detector_option, to_gray
from expressions.outputs import atomic_path, check_file, check_folder, write_image, write_json
from expressions.video import VideoFile, open_video, video_fps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=None,
                   help="raw data file or folder (default: look in --data-dir)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="where the prepared files are written (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of every Training class held out for validation (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the validation split (default: %(default)s)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop invalid rows (and say how many) instead of stopping (default: stop)")
    p.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    p.add_argument("--plot", type=Path, default=None,
                   help="class-distribution figure (default: results/class_distribution.png for the default "
                        "--data-dir, else class_distribution.png in --data-dir)")
    # The preprocessing test (faces from a video); see docs/live.md.
    p.add_argument("--video", type=Path, default=None,
                   help="instead of the dataset: write one 48x48 face crop per second of this video; "
                        "'demo' generates a 20-second video from a photo shipped with scikit-image")
    add_detector_option(p)
    p.add_argument("--out", type=Path, default=PREPROCESSING_TEST_DIR,
                   help="with --video: output folder for imageN.png, the crop of second N (default: %(default)s)")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be between 0 and 1")
    if args.plot is None:  # a scratch --data-dir never rewrites the committed figure
        default_dir = args.data_dir.resolve() == DATA_DIR.resolve()
        args.plot = RESULTS_DIR / "class_distribution.png" if default_dir else args.data_dir / "class_distribution.png"
    return args


def distribution_table(y_train, y_val, y_test, usage_test):
    cols = {"train": y_train, "val": y_val,
            "PublicTest": y_test[usage_test == "PublicTest"],
            "PrivateTest": y_test[usage_test == "PrivateTest"], "test": y_test}
    counts = {name: np.bincount(y, minlength=len(EMOTIONS)) for name, y in cols.items()}
    lines = [f"{'class':<10}" + "".join(f"{n:>12}" for n in cols)]
    for k, label in enumerate(EMOTIONS):
        lines.append(f"{label:<10}" + "".join(f"{counts[n][k]:>12,}" for n in cols))
    lines.append(f"{'total':<10}" + "".join(f"{counts[n].sum():>12,}" for n in cols))
    return "\n".join(lines), counts


def write_csv(path: Path, x, y, usage=None):
    """Course-format CSV, written to a temporary file first so a failure never
    leaves a half-written file in place of a good one."""
    lut = np.array([str(v) for v in range(256)], dtype=object)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("emotion,pixels" + (",Usage" if usage is not None else "") + "\n")
        for i in range(len(x)):
            row = f"{y[i]}," + " ".join(lut[x[i].ravel()])
            f.write(row + (f",{usage[i]}" if usage is not None else "") + "\n")
    return tmp


def prepare_dataset(args):
    data_dir = args.data_dir
    kind, paths = fer2013.find_fer2013_source(data_dir, args.source)
    check_folder(data_dir, "data folder")
    check_file(args.plot, "plot")
    settings = {"source": [str(Path(p).resolve()) for p in paths], "fingerprint": fer2013.fingerprint(paths),
                "val_fraction": args.val_fraction, "seed": args.seed, "skip_bad_rows": args.skip_bad_rows}
    manifest = data_dir / "prepared.json"
    outputs = ["train.csv", "test.csv", fer2013.PREPARED_NPZ]
    try:
        up_to_date = (json.loads(manifest.read_text()).get("settings") == settings
                      and all((data_dir / o).exists() for o in outputs))
    except (OSError, ValueError):
        up_to_date = False

    if up_to_date and not args.force:
        print(f"data/ is up to date with {', '.join(settings['source'])} (use --force to rebuild)")
        d = fer2013.load_prepared(data_dir)
        table, counts = distribution_table(d["y_train"], d["y_val"], d["y_test"], d["usage_test"])
        print(table)
        return 0

    print(f"reading {', '.join(map(str, paths))} ...", flush=True)
    x, y, usage, dropped = fer2013.load_fer2013(kind, paths, args.skip_bad_rows)
    is_train = usage == "Training"
    is_test = ~is_train
    if not is_train.any() or not is_test.any():
        raise UserError(f"{paths[0]}: need both Training and test (PublicTest/PrivateTest) rows; "
                        f"found {is_train.sum()} and {is_test.sum()}")
    x_train_all, y_train_all = x[is_train], y[is_train]
    is_val = fer2013.stratified_validation_split(y_train_all, args.val_fraction, args.seed)
    x_test, y_test, usage_test = x[is_test], y[is_test], usage[is_test]
    print(f"{len(x):,} rows: {is_train.sum():,} Training ({(~is_val).sum():,} train + {is_val.sum():,} "
          f"validation), {is_test.sum():,} test" + (f"; {dropped} bad rows dropped" if dropped else ""))

    # Write everything to temporary files, then move them into place together.
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp_train = write_csv(data_dir / "train.csv", x_train_all, y_train_all)
    tmp_test = write_csv(data_dir / "test.csv", x_test, y_test, usage_test)
    tmp_npz = data_dir / (fer2013.PREPARED_NPZ + ".tmp.npz")
    np.savez(tmp_npz, x_train=x_train_all[~is_val], y_train=y_train_all[~is_val],
             x_val=x_train_all[is_val], y_val=y_train_all[is_val],
             x_test=x_test, y_test=y_test, usage_test=usage_test,
             val_rows_in_train_csv=np.flatnonzero(is_val))
    os.replace(tmp_train, data_dir / "train.csv")
    os.replace(tmp_test, data_dir / "test.csv")
    os.replace(tmp_npz, data_dir / fer2013.PREPARED_NPZ)
    write_json(manifest, {"settings": settings, "outputs": outputs})

    table, counts = distribution_table(y_train_all[~is_val], y_train_all[is_val], y_test, usage_test)
    print(table)
    plots.class_distribution(counts, args.plot)
    print(f"wrote {data_dir / 'train.csv'}, {data_dir / 'test.csv'}, {data_dir / fer2013.PREPARED_NPZ}, {args.plot}")
    return 0


# ---------------------------------------------------------------- the preprocessing test
def make_demo_video(path: Path, seconds=20, fps=25, size=(640, 480)):
    """A 20-second video made from a real face photo that ships with scikit-image
    (astronaut Eileen Collins, NASA): the camera pans, zooms and tilts, so that the face
    detector has real work. Returns the path."""
    import cv2
    from skimage import data as skdata
    photo = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    fx, fy, fw, fh = FaceDetector().detect(photo, still=True)[0].box
    face_centre = (fx + fw / 2, fy + fh / 2)
    writer = VideoFile(path, fps)
    for i in range(seconds * fps):
        t = i / fps
        zoom = 1.3 + 0.6 * np.sin(2 * np.pi * t / 10)           # face 60%..190% of its size
        angle = 6 * np.sin(2 * np.pi * t / 7)                   # degrees
        target = (size[0] / 2 + 150 * np.sin(2 * np.pi * t / 8),  # where the face is on screen
                  size[1] / 2 + 50 * np.sin(2 * np.pi * t / 5))
        m = cv2.getRotationMatrix2D(face_centre, angle, zoom)
        m[:, 2] += np.array(target) - np.array(face_centre)
        writer.write(cv2.warpAffine(photo, m, size, borderMode=cv2.BORDER_REPLICATE))
    writer.close()
    return path


def crops_per_second(video: Path, out: Path, detector_name="yunet"):
    """Write one 48x48 grey face crop per second of video into out, imageN.png for second N
    (none for a second without a face), replacing earlier crops, and keep the input there
    as input_video.mp4."""
    cap = open_video(str(video))
    if cap is None:
        raise UserError(f"cannot read video {video}: not a video OpenCV can decode")
    fps = video_fps(cap)
    detector = FaceDetector(detector_name)
    crops, frame_no = {}, 0  # second -> crop
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        second = int(frame_no / fps)
        frame_no += 1
        if second in crops:
            continue
        faces = detector.detect(frame)
        if faces:  # the first frame of the second that shows a face; the largest face
            crops[second] = crop_face(to_gray(frame), faces[0])
    cap.release()
    if frame_no == 0:
        raise UserError(f"no frame could be read from {video}")
    if not crops:
        raise UserError(f"no face found in {video}")
    missing = [s for s in range(int((frame_no - 1) / fps) + 1) if s not in crops]
    for old in out.glob("image*.png"):
        old.unlink()
    # imageN is always second N: a second without a face leaves a gap, not a shift.
    for second, crop in crops.items():
        write_image(out / f"image{second}.png", crop)
    kept = out / "input_video.mp4"
    if video.resolve() != kept.resolve():
        if video.suffix.lower() == ".mp4":
            with atomic_path(kept) as tmp:
                shutil.copyfile(video, tmp)
        else:  # re-encode, so the kept copy is always an .mp4
            cap, writer = open_video(str(video)), VideoFile(kept, fps)
            if cap is None:  # readable a moment ago: replaced or removed since
                raise UserError(f"cannot read video {video} again to keep a copy")
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                writer.write(frame)
            cap.release()
            writer.close()
    print(f"{frame_no / fps:.1f} s of video at {fps:.2f} fps: wrote {len(crops)} face crops to {out}"
          + (f"; no face in second(s) {', '.join(map(str, missing))}, so no image of that number" if missing else ""))
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.video is not None:
        check_folder(args.out)
        video = args.video
        if str(video) == "demo":
            import tempfile
            video = make_demo_video(Path(tempfile.mkdtemp()) / "input_video.mp4")
            print("generated a 20-second demo video from scikit-image's astronaut() photo")
        elif not video.is_file():
            raise UserError(f"video not found: {video}")
        return crops_per_second(video, args.out, args.detector)
    return prepare_dataset(args)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
