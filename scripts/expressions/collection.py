"""Collections: photos and videos by the thousand in one command (scripts/analyze.py), on
this machine's cores or on a Ray cluster, resumable, each input's rows committed once.

Every input goes through the path predict.py (photos) and predict_live_stream.py (videos)
take: EmotionRecognizer.analyze, EmotionRecognizer.stream. A video is one unit of work (its
ids and seconds run in order); photos go in batches. A worker process loads its
recognizers once and keeps them. The driver alone writes: each finished unit becomes a
part file, renamed into place, so that an interrupted run loses at most the units in
flight, and a re-run skips every input already done with the same size, modification time
and settings. At the end the parts are merged into DIR/faces.parquet and DIR/inputs.parquet.

    DIR/parts/UNIT.faces.parquet   a unit's face rows (written first)
    DIR/parts/UNIT.inputs.parquet  a unit's input rows: the unit is committed once this exists

Workers: plain processes on this machine (no Ray needed), or the tasks of a running Ray
cluster (address=...), each task retried once if its worker dies.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import EMOTIONS, UserError
from .faces import DETECT_EVERY, DETECT_WIDTH, IMAGE_SUFFIXES, MAX_MEGAPIXELS
from .model import ALTERNATE, DEFAULT_TTA, file_sha256, load_model, model_path
from .outputs import atomic_path, check_folder, own_image, written_here
from .video import is_utf8, restrict_upload_demuxers

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp"}
LIST_SUFFIXES = {".txt", ".lst"}  # a text file named as an input lists inputs, one per line
PHOTOS_PER_UNIT = 8  # small enough to balance the workers, large enough that a part file holds several
ATTEMPTS = 2  # a unit whose worker dies is tried once more; then its inputs are errors
WRITTEN_BY = b"expressions analyze.py"  # the parquet files' metadata marker (see ours())
LANDMARKS = [f"{part}_{axis}" for part in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")
             for axis in "xy"]
PROBABILITIES = [e.lower() for e in EMOTIONS]
FACE_COLUMNS = ["input", "kind", "size", "mtime", "model", "second", "time", "face", "x", "y", "w", "h",
                *LANDMARKS, *PROBABILITIES, "emotion", "valence", "arousal", "frames"]
INPUT_COLUMNS = ["input", "kind", "size", "mtime", "model", "status", "reason", "faces", "frames", "seconds",
                 "elapsed", "worker", "worker_peak_mb", "attempts"]


@dataclass(frozen=True)
class Settings:
    """How photos and videos are read: predict.py's and predict_live_stream.py's options."""
    model: str = "own"
    tta: str = DEFAULT_TTA
    stream_model: str = "fast"
    stream_tta: str = ALTERNATE
    detector: str = "yunet"
    crop: str = "auto"
    detect_every: int = DETECT_EVERY
    detect_width: int = DETECT_WIDTH
    max_megapixels: float = MAX_MEGAPIXELS

    def fingerprint(self, kind):
        """What an input's rows depend on besides the file: the options of its kind and the
        model file's SHA-256 (a retrained model reads everything again)."""
        model, rest = ((self.model, (self.tta, self.max_megapixels)) if kind == "photo" else
                       (self.stream_model, (self.stream_tta, self.detect_every, self.detect_width)))
        return f"{kind}|{file_sha256(model_path(model))}|{self.detector}|{self.crop}|{rest}"


@dataclass(frozen=True)
class Input:
    path: str  # absolute
    kind: str  # photo, video, or unknown (named, neither suffix: tried as a photo)
    size: int
    mtime_ns: int
    key: str = ""  # path, size, modification time and settings: the unit of "already done"
    frames: int = 1  # a video's frame count from its header (read for those to do), for the progress bar


@dataclass
class Unit:
    """A unit of work: one video, or a batch of photos."""
    inputs: list
    attempts: int = 0
    name: str = field(init=False, default="")

    def __post_init__(self):
        self.name = hashlib.sha256("|".join(i.key for i in self.inputs).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- finding the inputs
def find_inputs(paths, settings: Settings, skip=()):
    """Inputs named on the command line: files; folders, searched recursively for photos and
    videos (other files, and images this toolkit wrote, are counted and left alone; links to
    folders are not followed); text files (.txt, .lst) listing paths, one per line, relative
    to the list, # for comments. `skip`: folders never searched (the output's parts).
    Returns (inputs, problems: error rows for what was named or found but cannot be read)."""
    found, problems, skipped = {}, [], 0
    skip = [Path(s).absolute() for s in skip]

    def add(path: Path):
        suffix = path.suffix.lower()
        kind = "photo" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "unknown"
        shown = os.fsencode(path.absolute()).decode("utf-8", "backslashreplace")
        try:
            st = path.stat()
            path = path.resolve()
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            problems.append(error_row(shown, kind, "its name is not UTF-8 text: rename the file"))
            return
        except ValueError:  # a list's line with a NUL byte
            problems.append(error_row(shown, kind, "not a file name (it holds a NUL byte)"))
            return
        except (OSError, RuntimeError) as err:  # missing, no permission, a link loop
            problems.append(error_row(shown, kind, f"cannot read: {getattr(err, 'strerror', None) or err}"))
            return
        if not stat.S_ISREG(st.st_mode):  # a folder in a list, a FIFO (opening it would wait forever), a device
            problems.append(error_row(shown, kind, "not a regular file"))
        elif str(path) not in found:
            found[str(path)] = (path, kind, st)

    def unreadable_folder(err):
        problems.append(error_row(os.fsencode(err.filename or "").decode("utf-8", "backslashreplace"), "unknown",
                                  f"cannot read the folder: {err.strerror or err}"))

    for given in map(Path, paths):
        if given.is_dir():
            for folder, subfolders, files in os.walk(given, onerror=unreadable_folder):
                subfolders[:] = sorted(d for d in subfolders if Path(folder, d).absolute() not in skip)
                for name in sorted(files):
                    path = Path(folder, name)
                    suffix = path.suffix.lower()
                    ours_ = suffix in IMAGE_SUFFIXES and path.is_file() and own_image(path)  # never opens a FIFO
                    if (suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES) and not ours_:
                        add(path)
                    else:
                        skipped += 1
        elif given.suffix.lower() in LIST_SUFFIXES and given.is_file():
            for line in read_list(given):
                add(given.parent / line if not Path(line).is_absolute() else Path(line))
        elif os.path.lexists(given):
            add(given)
        else:
            raise UserError(f"input not found: {given}")
    if skipped:
        print(f"left alone {skipped:,} file{'s' if skipped > 1 else ''} in the folders searched that are neither "
              "photos nor videos (by their suffix), or images this toolkit wrote", file=sys.stderr)
    inputs, fingerprints = [], {kind: settings.fingerprint(kind) for kind in ("photo", "video")}  # hashes the models
    for path, kind, st in found.values():
        fingerprint = fingerprints["video" if kind == "video" else "photo"]
        key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{fingerprint}".encode()).hexdigest()[:24]
        inputs.append(Input(str(path), kind, st.st_size, st.st_mtime_ns, key))
    return inputs, problems


def read_list(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the list {path}: {getattr(err, 'strerror', None) or err}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def frame_count(path):
    """A video's frame count from its header (0 if unknown): only for the progress bar."""
    import cv2
    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    finally:
        capture.release()


def plan_units(inputs):
    """Videos one per unit, longest first (so the last unit to finish is a short one);
    then photos in batches."""
    videos = sorted((i for i in inputs if i.kind == "video"), key=lambda i: -i.frames)
    photos = [i for i in inputs if i.kind != "video"]
    return [Unit([v]) for v in videos] + [Unit(photos[k:k + PHOTOS_PER_UNIT])
                                          for k in range(0, len(photos), PHOTOS_PER_UNIT)]


# ---------------------------------------------------------------- the worker's side
_recognizers = {}  # per worker process: loaded once, kept for every unit it reads


def recognizer(model, tta, settings: Settings):
    from .api import EmotionRecognizer
    key = (model, tta, settings.detector, settings.crop, settings.max_megapixels)
    if key not in _recognizers:
        _recognizers[key] = EmotionRecognizer(model, settings.detector, settings.crop, tta,
                                              max_megapixels=settings.max_megapixels)
    return _recognizers[key]


def peak_mb():
    """The worker process's peak resident memory so far, in MB (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_name():
    import socket
    return f"{socket.gethostname()}:{os.getpid()}"


def common(item: Input, model_name):
    """The columns every row of an input has: the file as read (path, size, modification
    time in seconds since 1970) and the model file's name."""
    return {"input": item.path, "kind": item.kind, "size": item.size, "mtime": item.mtime_ns / 1e9,
            "model": model_name}


def error_row(path, kind, reason, size=None, mtime=None):
    return {"input": path, "kind": kind, "size": size, "mtime": mtime, "model": None, "status": "error",
            "reason": reason, "faces": 0, "frames": 0, "seconds": 0.0, "elapsed": 0.0, "worker": None,
            "worker_peak_mb": None, "attempts": 0}


def read_unit(unit: Unit, settings: Settings, on_frames=None):
    """A unit's rows: (face rows, input rows), lists of dicts. An input that cannot be read
    (not an image, a corrupt video) is an input row with status error and the reason."""
    faces, inputs = [], []
    for item in unit.inputs:
        started = time.time()
        video = item.kind == "video"
        model = settings.stream_model if video else settings.model
        base = {**common(item, model_file(model)), "key": item.key}
        try:
            rows, frames, seconds = (read_video(item, settings, base, on_frames) if video else
                                     read_photo(item, settings, base))
            status, reason = ("done" if rows else "no face"), ""
        except UserError as err:
            rows, frames, seconds, status, reason = [], 0, 0.0, "error", str(err)
        except Exception as err:  # a failure nobody foresaw: recorded with its input, the others still read
            rows, frames, seconds, status = [], 0, 0.0, "error"
            reason = str(UserError(f"unexpected {type(err).__name__}: {err}"))[:500]
        faces += rows
        inputs.append({**base, "status": status, "reason": reason, "faces": len({r["face"] for r in rows}),
                       "frames": frames, "seconds": seconds, "elapsed": time.time() - started,
                       "worker": worker_name(), "worker_peak_mb": peak_mb(), "attempts": unit.attempts + 1})
        if on_frames and not video:
            on_frames(1)
    return faces, inputs


def model_file(model):
    return model_path(model).name


def read_photo(item: Input, settings: Settings, base):
    from .faces import read_image
    image = read_image(item.path, settings.max_megapixels)
    found = recognizer(settings.model, settings.tta, settings).analyze(image, item.path)
    rows = []
    for n, face in enumerate(found, start=1):
        marks = ([float(v) for point in face.landmarks for v in point] if face.landmarks is not None
                 else [None] * len(LANDMARKS))
        rows.append({**base, "second": None, "time": None, "face": n, **dict(zip("xywh", map(int, face.box))),
                     **dict(zip(LANDMARKS, marks)), **face_values(face), "frames": None})
    return rows, 1, 0.0


def read_video(item: Input, settings: Settings, base, on_frames=None):
    reader = recognizer(settings.stream_model, settings.stream_tta, settings)
    # One thread per worker: the workers, one per core, are the parallelism.
    stream = reader.stream(item.path, detect_every=settings.detect_every, detect_width=settings.detect_width,
                           overlap=False)
    rows, counted = [], 0
    for frame in stream:
        for second in frame.seconds:
            for face in second.faces:
                rows.append({**base, "second": second.second, "time": second.time, "face": face.id,
                             **dict(zip("xywh", map(int, face.box))), **dict.fromkeys(LANDMARKS),
                             **face_values(face), "frames": face.frames})
        if on_frames and stream.frames - counted >= 100:
            on_frames(stream.frames - counted)
            counted = stream.frames
    if on_frames:
        on_frames(stream.frames - counted)
    if stream.frames == 0:
        raise UserError(f"no frame could be read from {item.path}")
    return rows, stream.frames, stream.frames / stream.fps


def face_values(face):
    return {**{e.lower(): float(face.probabilities[e]) for e in EMOTIONS}, "emotion": face.emotion,
            "valence": float(face.valence), "arousal": float(face.arousal)}


def worker_start(settings, kinds, parent=None):
    """A worker process: one thread for OpenCV (the workers are the parallelism), and the
    models of the `kinds` of input it will read, loaded now (so that an input's `elapsed`
    is its reading alone). Given its parent's PID (Linux), it ends with the parent, even
    one killed by SIGKILL: an idle worker would otherwise wait forever, holding its models."""
    import signal
    import cv2
    cv2.setNumThreads(1)
    if parent is not None:  # a process of the pool, not the caller's own (workers=1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: no worker tracebacks
        restrict_upload_demuxers()  # its files are read as videos only, not as playlists or concat scripts
    if parent is not None and sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that
            os._exit(1)
    if "photo" in kinds:
        recognizer(settings.model, settings.tta, settings)
    if "video" in kinds:
        recognizer(settings.stream_model, settings.stream_tta, settings)


def process_unit(unit, settings):  # a local worker's task
    return unit.name, read_unit(unit, settings)


# ---------------------------------------------------------------- the driver's side
class Parts:
    """The committed units of a run's output folder."""

    def __init__(self, folder: Path):
        self.folder = folder / "parts"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file of that name, no permission
            raise UserError(f"cannot use {self.folder} for the finished inputs: {err.strerror or err}") from None

    def done_keys(self):
        """Keys of the inputs already read (done or no face; errors are tried again), of
        units whose faces part is whole too: a unit whose faces were lost is read again."""
        import pyarrow.parquet as pq
        table = self.read("inputs")
        if table is None:
            return set()
        whole = set()
        for unit in set(table.unit):
            with contextlib.suppress(Exception):  # missing, empty, truncated: anything pyarrow raises
                pq.read_schema(self.folder / f"{unit}.faces.parquet")
                whole.add(unit)
        return set(table.loc[(table.status != "error") & table.unit.isin(whole), "key"])

    def commit(self, unit_name, faces, inputs):
        """The unit's faces, then its inputs (the inputs part says the unit is done), each on disk before the next."""
        write_table(self.folder / f"{unit_name}.faces.parquet", faces, FACE_COLUMNS + ["key"], durable=True)
        write_table(self.folder / f"{unit_name}.inputs.parquet", inputs, INPUT_COLUMNS + ["key"], durable=True)

    def read(self, which, units=None):
        import pandas as pd
        files = sorted(self.folder.glob(f"*.{which}.parquet"), key=lambda p: p.lstat().st_mtime_ns)  # a broken link too
        if units is not None:
            files = [f for f in files if f.name.split(".")[0] in units]
        needed, tables, foreign = (INPUT_COLUMNS if which == "inputs" else FACE_COLUMNS) + ["key"], [], []
        for f in files:
            try:
                table = pd.read_parquet(f)
            except Exception:  # noqa: BLE001 (not parquet at all, truncated: anything pyarrow raises)
                foreign.append(f)
                continue
            if not set(needed) <= set(table.columns) or not all(
                    pd.api.types.infer_dtype(table[column], skipna=False) in ("string", "empty")
                    for column in ("input", "key")):
                foreign.append(f)  # another kind of table, or another version's types: the merge could not sort it
            elif len(table):
                tables.append(table[needed].assign(unit=f.name.split(".")[0]))
        if foreign:
            print(f"note: left aside {len(foreign)} file(s) in {self.folder} that are not finished inputs of this "
                  f"toolkit (the first: {foreign[0].name})", file=sys.stderr)
        return pd.concat(tables, ignore_index=True) if tables else None


def write_table(path, rows, columns, marked=False, durable=False):
    """rows (dicts or a DataFrame) as a parquet file, atomically (durable: see atomic_path),
    with the columns in order."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    if marked:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"written_by": WRITTEN_BY})
    try:
        with atomic_path(path, durable) as tmp:
            pq.write_table(table, tmp)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def ours(path: Path) -> bool:
    """Whether a parquet file is one analyze.py wrote (its schema metadata says so)."""
    import pyarrow.parquet as pq
    try:
        return (pq.read_schema(path).metadata or {}).get(b"written_by") == WRITTEN_BY
    except Exception:  # not a parquet file at all
        return False


class Progress:
    """One line on stderr: inputs and frames done, the rate, the time left (redrawn in
    place on a terminal, a line every 10 s otherwise)."""

    def __init__(self, inputs, frames):
        self.total_inputs, self.total_frames = inputs, max(frames, 1)
        self.inputs = self.frames = 0
        self.started = self.shown = time.time()
        self.tty = sys.stderr.isatty()

    def add(self, inputs=0, frames=0):
        self.inputs += inputs
        self.frames += frames
        now = time.time()
        if now - self.shown >= (0.2 if self.tty else 10):
            self.show(now)

    def show(self, now=None, end=False):
        now, elapsed = now or time.time(), max((now or time.time()) - self.started, 1e-9)
        rate = self.frames / elapsed
        left = max(self.total_frames - self.frames, 0) / rate if rate > 0 else float("inf")
        line = (f"analyze: {self.inputs:,} of {self.total_inputs:,} inputs, {self.frames:,} frames, "
                f"{rate:,.0f} frames/s, {format_duration(left)} left")
        print(("\r" + line + " " * 4) if self.tty else line, end="\n" if end or not self.tty else "",
              file=sys.stderr, flush=True)
        self.shown = now


def format_duration(seconds):
    if seconds == float("inf"):
        return "time"
    seconds = int(seconds)
    return (f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else
            f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s")


def run_local(units, settings, workers, commit, progress):
    """The units on this machine: in this process (workers=1) or in `workers` processes,
    each loading its recognizers once, each on one thread (OpenCV's included: the
    workers, one per core, are the parallelism). A unit whose process dies is tried again
    in a new pool, once; then its inputs are recorded as errors."""
    kinds = {"video" if i.kind == "video" else "photo" for unit in units for i in unit.inputs}
    if workers == 1:
        worker_start(settings, kinds)
        for unit in units:
            commit(unit, read_unit(unit, settings, on_frames=lambda n: progress.add(frames=n)), frames_counted=True)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    todo = list(units)
    while todo:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_start,
                                   initargs=(settings, kinds, os.getpid()))
        running, broken = {}, False
        try:
            while (todo or running) and not broken:
                while todo and len(running) < 2 * workers and not broken:  # bounded: results come back as they end
                    try:
                        running[pool.submit(process_unit, todo[0], settings)] = todo[0]
                        todo.pop(0)
                    except BrokenProcessPool:  # a worker died since the last wait: this unit never started
                        broken = True
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = running.pop(future)
                    try:
                        commit(unit, future.result()[1])
                    except BrokenProcessPool:
                        broken = True
                        retry(unit, todo, commit, "its worker process died")
            for unit in running.values():  # in the broken pool with it: tried again
                retry(unit, todo, commit, "its worker process died")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def retry(unit, todo, commit, why):
    unit.attempts += 1
    if unit.attempts < ATTEMPTS:
        todo.append(unit)
    else:
        commit(unit, ([], [{**error_row(i.path, i.kind, f"{why} {unit.attempts} times reading it", i.size,
                                        i.mtime_ns / 1e9), "key": i.key, "attempts": unit.attempts}
                           for i in unit.inputs]))


def reachable(address, timeout=5.0):
    """A Ray address HOST:PORT must answer within `timeout` seconds: ray.init() would retry
    a silent one for minutes. Other forms (auto, ray://...) are left to Ray."""
    import socket
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


def run_ray(units, settings, address, commit, progress):
    """The units as tasks of a running Ray cluster: one CPU each, retried once by Ray if
    the worker or its node dies; a worker process keeps its recognizers for later tasks."""
    try:
        import ray
    except ImportError:
        raise UserError("a Ray cluster needs Ray: pip install -e .[cluster]") from None
    reachable(address)
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as err:  # ConnectionError, a version mismatch, ...: one line
        raise UserError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0][:300]}") from None
    try:
        task = ray.remote(num_cpus=1, max_retries=ATTEMPTS - 1, retry_exceptions=False)(read_unit)
        slots = max(int(ray.cluster_resources().get("CPU", 1)), 1) * 2
        todo, running = list(units), {}
        while todo or running:
            while todo and len(running) < slots:
                unit = todo.pop(0)
                running[task.remote(unit, settings)] = unit
            finished, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
            for ref in finished:
                unit = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker or its node died twice
                    unit.attempts = ATTEMPTS - 1
                    retry(unit, [], commit, f"its Ray worker died ({type(err).__name__})")
                    continue
                commit(unit, result)
    finally:
        ray.shutdown()


def analyze_collection(inputs, out, workers=None, address=None, csv=False, settings: Settings | None = None):
    """Every face in every photo and video of `inputs` (paths: files, folders, lists) into
    the folder `out`: faces.parquet, inputs.parquet (and .csv of both with csv=True). On
    this machine's cores (`workers`, default all), or on the Ray cluster at `address`.
    Inputs done by an earlier run into the same folder are skipped. Returns the two tables
    (pandas DataFrames: faces, inputs)."""
    settings = settings or Settings()
    if not is_utf8(str(out)):  # the tables' writer (Parquet) cannot name it
        raise UserError(f"--out {out}: its name is not UTF-8 text: choose another")
    out = check_folder(out)
    outputs = [out / "faces.parquet", out / "inputs.parquet"] + (
        [out / "faces.csv", out / "inputs.csv"] if csv else [])
    foreign = [p for p in outputs if os.path.lexists(p) and not (ours(p) if p.suffix == ".parquet" else
                                                                 written_here(p, csv_header(p)))]
    if foreign:
        raise UserError(f"{foreign[0]} already exists and this toolkit did not write it: it is never replaced; "
                        "choose another --out folder, or move it away")
    cores = len(os.sched_getaffinity(0))
    workers = cores if workers is None else workers
    if not 1 <= workers <= 2 * cores:  # each worker holds its own models: about 700 MB
        raise UserError(f"--workers {workers}: give 1 to {2 * cores} (twice this machine's cores; each worker "
                        "holds its own models, about 700 MB)")
    if not settings.max_megapixels > 0 or settings.detect_every < 1 or settings.detect_width < 16:
        raise UserError(f"max_megapixels {settings.max_megapixels:g}, detect_every {settings.detect_every}, "
                        f"detect_width {settings.detect_width}: give a positive number, at least 1, at least 16")
    for model in {settings.model, settings.stream_model}:
        if not model_path(model).exists():
            load_model(model)  # the one-line "model not found", before any work
    parts = Parts(out)
    found, problems = find_inputs(inputs, settings, skip=[parts.folder])
    if not found and not problems:
        raise UserError(f"no photos or videos in {', '.join(map(str, inputs))}")
    done = parts.done_keys()
    todo = [replace(i, frames=frame_count(i.path)) if i.kind == "video" else i for i in found if i.key not in done]
    if len(found) > len(todo):
        print(f"skipping {len(found) - len(todo):,} inputs an earlier run read (same size, modification time, "
              "model and options)", file=sys.stderr)
    progress = Progress(len(todo), sum(i.frames for i in todo))

    def commit(unit, result, frames_counted=False):
        faces, rows = result
        parts.commit(unit.name, faces, rows)
        progress.add(inputs=len(unit.inputs), frames=0 if frames_counted else sum(r["frames"] for r in rows))

    units = plan_units(todo)
    if units:
        where = f"the Ray cluster at {address}" if address else f"{min(workers, len(units))} worker" + (
            "s" if min(workers, len(units)) > 1 else "") + " on this machine"
        print(f"reading {len(todo):,} inputs ({sum(i.kind == 'video' for i in todo):,} videos) on {where}",
              file=sys.stderr, flush=True)
        if address:
            run_ray(units, settings, address, commit, progress)
        else:
            run_local(units, settings, min(workers, len(units)), commit, progress)
        progress.show(end=True)
    return merge(parts, found, problems, out, csv)


def csv_header(path):
    return ",".join(FACE_COLUMNS if path.name.startswith("faces") else INPUT_COLUMNS)


def merge(parts, found, problems, out, csv):
    """The committed parts of the current inputs, each input once (the newest part that has
    it), into the output files."""
    import pandas as pd
    keys = {i.key for i in found}
    inputs = parts.read("inputs")
    if inputs is not None:
        inputs = inputs[inputs.key.isin(keys)].drop_duplicates("key", keep="last")
    faces = parts.read("faces", units=None if inputs is None else set(inputs.unit))
    if faces is not None and inputs is not None:
        chosen = set(zip(inputs.key, inputs.unit))
        faces = faces[[pair in chosen for pair in zip(faces.key, faces.unit)]]
    faces = (pd.DataFrame(columns=FACE_COLUMNS) if faces is None else
             faces.sort_values(["input", "second", "face"], na_position="first")[FACE_COLUMNS])
    inputs = pd.concat([t for t in (inputs, pd.DataFrame(problems, columns=INPUT_COLUMNS)) if t is not None and len(t)],
                       ignore_index=True) if (inputs is not None or problems) else pd.DataFrame(columns=INPUT_COLUMNS)
    inputs = inputs.sort_values("input")[INPUT_COLUMNS].reset_index(drop=True)
    faces = faces.reset_index(drop=True)
    write_table(out / "faces.parquet", faces, FACE_COLUMNS, marked=True)
    write_table(out / "inputs.parquet", inputs, INPUT_COLUMNS, marked=True)
    if csv:
        from .outputs import write_text
        write_text(out / "faces.csv", faces.to_csv(index=False, float_format="%.6g"))
        write_text(out / "inputs.csv", inputs.to_csv(index=False, float_format="%.6g"))
    return faces, inputs
