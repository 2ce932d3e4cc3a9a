"""Writing results. Every output path is checked before the work starts (so a long run
never ends in a traceback at its last step), and every file is written to a temporary
name beside it and renamed into place (so a crash, or a second run writing the same
folder, never leaves a half-written or mixed file)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from . import UserError


def _probe(folder: Path, what: str):
    """Create the folder if needed and prove a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write {what}: {err.strerror or err} ({folder})") from None


def check_file(path, what="output file") -> Path:
    """An output file's path, ready to be written: its folder exists (created if missing)
    and is writable, and the path is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder")
    _probe(path.parent, f"{what} {path}")
    return path


def check_folder(path, what="output folder") -> Path:
    """An output folder, created if missing; a clear error if it is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a file, not a folder")
    _probe(path, f"{what} {path}")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix, so writers that look at it
    choose the right format); renamed onto `path` if the block succeeds, removed if not."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def write_image(path, image) -> Path:
    """A PNG/JPEG (by the path's suffix) of a uint8 image, encoded in memory, then written."""
    import cv2
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", image)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"cannot encode an image as {path.suffix or '.png'} for {path}")
    return write_bytes(path, encoded.tobytes())


def save_figure(fig, path, dpi=110) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import io
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def unique_names(paths, suffix):
    """Output file names for input files: `stem + suffix`, and for inputs that share a
    stem (photo.jpg in two folders) `stem-2 + suffix`, `stem-3 + suffix`, ... in order."""
    names = []
    for p in paths:
        stem, k = Path(p).stem, 1
        name = stem + suffix
        while name in names:
            k += 1
            name = f"{stem}-{k}{suffix}"
        names.append(name)
    return names
