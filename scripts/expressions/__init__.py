"""The facial-expression toolkit: a Python API over one module per concern.

    from expressions import EmotionRecognizer        # the API (expressions.api)
    faces = EmotionRecognizer().analyze("photo.jpg")

    expressions          labels, paths, the one-line user error (this file)
    expressions.api      EmotionRecognizer: photos, frames, videos, webcams; Frame
    expressions.outputs  writing results: checked before the work, atomic when written
    expressions.data     FER2013: reading, validating, splitting, the prepared arrays
    expressions.model    the networks, saving and loading, prediction with test-time augmentation
    expressions.training augmentation, the resumable fit loop's callbacks, the batch-norm pass
    expressions.reports  what a trained model's folder holds: metrics, curves, confusion matrix
    expressions.faces    face detection (YuNet, Haar) and reading photos
    expressions.crops    the 48x48 crop of a face: box plus margin, or aligned on the landmarks
    expressions.pipeline detect, crop, classify; Face and Second, the results; stable ids and
                         per-second records of a stream; drawing
    expressions.video    video capture and writing, the per-second summary of a stream
    expressions.plots    the figures
    expressions.calibration  one temperature for honest probabilities; ECE and NLL
    expressions.collection  photo and video collections (analyze.py): local workers or Ray, resumable
    expressions.evaluation  labelled photos of real faces, scored (evaluate_photos.py)
    expressions.web      the web app and HTTP API of serve.py (static/ holds its page)
    expressions.browser  the web app in headless Chromium with a fake webcam (its test and screenshot)
    expressions.hostile  decompression bombs and slow clients, for the tests and the server benchmark

Each script imports only the modules it uses; `import expressions` alone loads none of
them (the API's names are imported on first use).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter (oneDNN, CPU feature notes) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# OpenCV's own warnings (a missing camera, say) would duplicate our one-line messages.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # and FFmpeg's, which OpenCV's level does not cover

VERSION = "0.5.0"  # the toolkit's version, as GET /api/health reports it

# FER2013's label ids, in the order the model outputs them.
EMOTIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
IMAGE_SIZE = 48

ROOT = Path(__file__).resolve().parent.parent.parent
DATA_DIR = ROOT / "data"
RESULTS_DIR = ROOT / "results"
MODEL_DIR = RESULTS_DIR / "model"
PREPROCESSING_TEST_DIR = RESULTS_DIR / "preprocessing_test"


class UserError(Exception):
    """Every error the toolkit reports: a problem the user can fix (a missing file, an image
    that is not one or is too large, a bad option, ...), with a one-line message. The
    scripts print it as `error: MESSAGE` and exit with code 1; the API raises it."""

    def __init__(self, message=""):
        # One line, whatever a file name or an upload put in it (a newline, a NUL, an escape).
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


API = {"EmotionRecognizer": "api", "VideoStream": "api", "Frame": "api", "Face": "pipeline", "Second": "pipeline",
       "ImageTooLarge": "faces", "analyze_collection": "collection", "evaluate_photos": "evaluation"}


def __getattr__(name):  # the API's names, imported when first used
    if name in API:
        import importlib
        return getattr(importlib.import_module(f".{API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_cli(main):
    """Run a script's main(); user errors become one line on stderr and exit code 1."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the output was piped into a reader that stopped (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(141)
    sys.exit(code or 0)


@contextlib.contextmanager
def quiet_stderr():
    """Hide what C++ libraries write straight to the stderr file descriptor (TensorFlow's
    start-up notes, TensorFlow Lite's "Created XNNPACK delegate"): not for users. Only in
    the main thread: the descriptor is the whole process's, and two threads swapping it at
    once could leave it pointing at /dev/null for good (elsewhere the notes show)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def import_tensorflow():
    """Import TensorFlow and Keras quietly (TF_CPP_MIN_LOG_LEVEL does not reach every line)."""
    if "keras" not in sys.modules:
        with quiet_stderr():
            import tensorflow  # noqa: F401
            import keras  # noqa: F401
            tensorflow.constant(0)  # the first op loads the CPU kernels, which also print
    return sys.modules["tensorflow"], sys.modules["keras"]


def machine():
    """CPU model, core count and AVX-family flags, for the machine line of reports and
    benchmarks: which TensorFlow Lite form wins, and by how much, depends on the flags."""
    import platform
    import re
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    cpu = names[0].strip() if names else platform.processor() or platform.machine()
    flags = set()
    for line in re.findall(r"^flags\s*:(.*)$", text, re.MULTILINE):
        flags.update(f for f in line.split() if re.fullmatch(r"avx\w*|amx\w*|fma|f16c", f))
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": " ".join(sorted(flags))}


def machine_line(info=None) -> str:
    """"CPU (N cores; avx avx2 ...)", the machine line of every benchmark output, from
    machine() or a recorded copy of it (older ones have no flags: they say so)."""
    info = info or machine()
    flags = info.get("cpu_flags")
    flags = "CPU flags not recorded" if flags is None else flags or "no AVX flags"
    return f"{info['cpu']} ({info['cores']} cores; {flags})"
