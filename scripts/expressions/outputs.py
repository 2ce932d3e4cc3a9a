"""Writing results. Every output path is checked before the work starts (so a long run
never ends in a traceback at its last step), and every file is written to a temporary
name beside it and renamed into place (so a crash, or a second run writing the same
folder, never leaves a half-written or mixed file). A written file gets the permissions a
plain open(path, "w") would give: the temporary file is created with mode 0666, so the
umask (and any default ACL) applies, not mkstemp's owner-only 0600.

Files the user names (predict.py's --csv and --json, and the NAME_emotions.png images in
its --out folder; evaluate_photos.py's; predict_live_stream.py's --save-video, --csv, --plot
and --json) follow two more rules, checked before the work (check_user_outputs):
  - an input is never overwritten (compared by device and inode, so a symlink or a
    hard link to an input counts as that input);
  - a file this toolkit did not write is never replaced: the run is refused with one
    line naming it. Our own previous output is replaced, so a command can be re-run.
A file this toolkit wrote is recognised by its content, not its name: every PNG written
here ends with a tEXt chunk "Software: expressions" (just before IEND); a JSON file
written with mark=True begins with the key "written_by": "expressions ..."; a CSV by its
writer's exact header line; an MP4 or AVI video by a last box holding the marker.
Anything else, or a file edited and re-saved by another program, is someone else's.
Other outputs, files of fixed names in an output folder (results/ by default: reports,
figures, models, videos, hack_the_cnn.py's four files), are replaced atomically, marked
or not: the committed files there were written before the marker existed. Only the input
rule applies to them where a script reads a file the user names (check_not_inputs).
predict.py also never reads its own outputs back: a folder search skips images that
carry the marker (own_image); a photo named on the command line is always read."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import struct
import sys
import tempfile
import zlib
from pathlib import Path

from . import UserError

SOFTWARE = "expressions"  # the marker's value: the toolkit's package name


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


# ---------------------------------------------------------------- recognising our own files
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_PNG_MARK = _png_chunk(b"tEXt", b"Software\0" + SOFTWARE.encode())


def mark_png(data: bytes) -> bytes:
    """PNG bytes with the marker chunk inserted just before IEND (other data unchanged)."""
    if not data.startswith(_PNG_SIGNATURE) or not data.endswith(_IEND) or data.endswith(_PNG_MARK + _IEND):
        return data
    return data[:-len(_IEND)] + _PNG_MARK + _IEND


def _tail(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read()


def own_image(path) -> bool:
    """Whether a file is a PNG this toolkit wrote (its last two chunks: marker, IEND).
    Reads 50 bytes, never the image: cheap enough for every file of a folder search."""
    try:
        return _tail(Path(path), len(_PNG_MARK) + len(_IEND)) == _PNG_MARK + _IEND
    except OSError:
        return False


# A video written here ends with the marker in a box every reader skips: an MP4 'free' box,
# or an AVI 'JUNK' chunk after the RIFF one (its body kept even, as RIFF chunks are).
_VIDEO_MARK_BODY = f"Software: {SOFTWARE}".encode()
_VIDEO_MARK_BODY += b"\0" * (len(_VIDEO_MARK_BODY) % 2)
VIDEO_MARKS = {".mp4": struct.pack(">I", 8 + len(_VIDEO_MARK_BODY)) + b"free" + _VIDEO_MARK_BODY,
               ".avi": b"JUNK" + struct.pack("<I", len(_VIDEO_MARK_BODY)) + _VIDEO_MARK_BODY}


def mark_video(path):
    """Append the marker to a finished .mp4 or .avi file (in place: it is still a temporary file)."""
    with open(path, "ab") as f:
        f.write(VIDEO_MARKS[Path(path).suffix.lower()])


_JSON_MARK = re.compile(rb'\A\s*\{\s*"written_by"\s*:\s*"' + re.escape(SOFTWARE.encode()) + rb'[ "]')


def written_here(path, csv_header: str | None = None) -> bool:
    """Whether the file at `path` is recognisably one this toolkit wrote: a marked PNG, a
    marked JSON file, or (given the writer's header line) one of its CSV files."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if head.startswith(_PNG_SIGNATURE):
        return own_image(path)
    mark = VIDEO_MARKS.get(path.suffix.lower())
    if mark is not None and _tail(path, len(mark)) == mark:
        return True
    if _JSON_MARK.match(head):
        return True
    return csv_header is not None and head.split(b"\n", 1)[0].rstrip(b"\r") == csv_header.encode()


def file_ids(paths) -> dict:
    """{(device, inode): path} of the files that exist among `paths`."""
    ids = {}
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.setdefault((st.st_dev, st.st_ino), Path(p))
    return ids


def check_not_inputs(outputs, inputs):
    """Refuse (one line, before the work) an output that is one of the inputs, or two
    outputs at the same path. `outputs`: (path, what) pairs."""
    inputs, seen = file_ids(inputs), {}
    for path, what in outputs:
        path = Path(path)
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise UserError(f"{what} {path} is also the {seen[key]}: choose another name")
        seen[key] = what
        with contextlib.suppress(OSError):
            st = os.stat(path)
            same = inputs.get((st.st_dev, st.st_ino))
            if same is not None:  # a link to an input is named too
                raise UserError(f"{what} {path} is one of the inputs{'' if same == path else f' ({same})'}: an "
                                "input is never overwritten; choose another name")


def check_user_outputs(outputs, inputs=()):
    """For output files the user named: refuse, with one line and before any work, one
    that would overwrite an input or a file this toolkit did not write (see the module's
    docstring). `outputs`: (path, what, csv_header or None) for each file the run may write."""
    check_not_inputs([(path, what) for path, what, _ in outputs], inputs)
    foreign = [(Path(path), what) for path, what, header in outputs
               if os.path.lexists(path) and not written_here(path, header)]
    if foreign:
        (path, what), more = foreign[0], len(foreign) - 1
        others = f" (and {more} more such file{'s' if more > 1 else ''})" if more else ""
        raise UserError(f"{what} {path} already exists{others} and this toolkit did not write it: it is never "
                        "replaced; choose another name or folder, or move it away")


# ---------------------------------------------------------------- writing
def new_file_beside(path) -> Path:
    """A new empty hidden file beside `path`, with its suffix, created with mode 0666 so
    the umask (and any default ACL) applies as for a plain open(path, "w")."""
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.stem}-{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path, durable=False):
    """Yields a temporary path beside `path` (same suffix, so writers that look at it
    choose the right format); renamed onto `path` if the block succeeds, removed if not.
    durable: the file's bytes reach the disk before the rename, and the rename after it
    (so a power cut leaves the old file or the whole new one, never an empty one)."""
    path = Path(path)
    tmp = new_file_beside(path)
    try:
        yield tmp
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
        if durable:
            fsync(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data: bytes) -> Path:
    """Write a file atomically; PNG data gets the marker (mark_png)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(mark_png(bytes(data)))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, mark=False) -> Path:
    """mark=True: a dict gets "written_by" as its first key, so that a later run knows
    the file is ours (for files the user names: see check_user_outputs)."""
    if mark:
        obj = {"written_by": f"{SOFTWARE} {Path(sys.argv[0]).name}".rstrip(), **obj}
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
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    # A PNG's Software chunk is our marker (write_bytes), not matplotlib's version note.
    fig.savefig(buffer, format=fmt, dpi=dpi, **({"metadata": {"Software": None}} if fmt == "png" else {}))
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
