"""analyze.py: a folder of photos and videos in one command, on this machine's cores; the
same rows as predict.py and predict_live_stream.py; errors recorded, not fatal; re-runs
skip what is done; a worker or the driver killed mid-job loses nothing."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import SCRIPTS, SHARED, assert_clean_error, full, run_script
from expressions import EMOTIONS
from expressions.collection import Parts, Settings, error_row, find_inputs

MEDIA = SHARED / "media"
VIDEOS = [MEDIA / "fer_woman2.mp4", MEDIA / "liveportrait_d10.mp4"]
needs_media = pytest.mark.skipif(not all(v.exists() for v in VIDEOS),
                                 reason=f"no shared videos in {MEDIA} (set EXPRESSIONS_SHARED)")
PROBABILITIES = [e.lower() for e in EMOTIONS]


def make_collection(folder):
    """Four shared photos and two shared videos in folders, a file named like a photo that
    is not one, a corrupt video and a file that is neither (left alone)."""
    (folder / "photos").mkdir(parents=True)
    (folder / "videos" / "more").mkdir(parents=True)
    for photo in sorted((MEDIA / "photos").glob("*.jpg"))[:4]:
        shutil.copy(photo, folder / "photos" / photo.name)
    shutil.copy(VIDEOS[0], folder / "videos" / VIDEOS[0].name)
    shutil.copy(VIDEOS[1], folder / "videos" / "more" / VIDEOS[1].name)
    (folder / "photos" / "notes.jpg").write_text("not an image\n")
    (folder / "videos" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    (folder / "README.md").write_text("left alone\n")
    return folder


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    if not all(v.exists() for v in VIDEOS):
        pytest.skip(f"no shared videos in {MEDIA}")
    root = tmp_path_factory.mktemp("collection")
    folder = make_collection(root / "in")
    result = run_script("analyze.py", folder, "--out", root / "out", "--csv", "--workers", "2")
    return folder, root / "out", result


@needs_media
def test_a_folder_gives_a_row_per_face_and_an_input_row_per_file_errors_included(analyzed):
    folder, out, result = analyzed
    assert result.returncode == 1, result.stderr  # two inputs could not be read
    assert "Traceback" not in result.stderr
    inputs = pd.read_parquet(out / "inputs.parquet").set_index("input")
    assert len(inputs) == 8 and "README.md" not in " ".join(inputs.index)
    status = {os.path.basename(p): s for p, s in inputs.status.items()}
    assert status.pop("notes.jpg") == "error" and status.pop("broken.mp4") == "error"
    assert set(status.values()) <= {"done", "no face"} and list(status.values()).count("done") >= 5
    reasons = inputs.reason[inputs.status == "error"]
    assert all(reason and "\n" not in reason for reason in reasons)
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {p}: {r}" for p, r in reasons.items()]
    videos = inputs[inputs.kind == "video"]
    assert (videos.loc[videos.status == "done", "frames"] > 400).all()
    faces = pd.read_parquet(out / "faces.parquet")
    assert set(faces.input) == set(inputs.index[inputs.status == "done"])
    assert np.allclose(faces[PROBABILITIES].sum(axis=1), 1, atol=1e-4)
    assert (faces.model[faces.kind == "video"] == "fast_model.pkl").all()
    assert (faces.model[faces.kind == "photo"] == "my_own_model.pkl").all()
    # The CSV files hold the same table.
    assert len(pd.read_csv(out / "faces.csv")) == len(faces) and len(pd.read_csv(out / "inputs.csv")) == 8


@needs_media
def test_the_rows_are_those_of_predict_and_predict_live_stream(analyzed, tmp_path):
    folder, out, _ = analyzed
    faces = pd.read_parquet(out / "faces.parquet")
    photos = sorted((folder / "photos").glob("*.jpg"))
    photos.remove(folder / "photos" / "notes.jpg")
    run_script("predict.py", *photos, "--csv", tmp_path / "photos.csv")
    expected = pd.read_csv(tmp_path / "photos.csv")
    expected = expected[expected.face > 0]
    ours = faces[faces.kind == "photo"]
    assert len(ours) == len(expected) > 0
    for (_, a), (_, b) in zip(ours.sort_values(["input", "face"]).iterrows(),
                              expected.assign(file=expected.file.map(lambda f: str(f))).sort_values(
                                  ["file", "face"]).iterrows()):
        assert os.path.samefile(a.input, b.file) and a.face == b.face and a.emotion == b.emotion
        assert [a.x, a.y, a.w, a.h] == [b.x, b.y, b.w, b.h]
        assert np.abs(np.round(a[PROBABILITIES].astype(float), 4) - b[PROBABILITIES].astype(float)).max() < 1e-6
    for video in (folder / "videos").rglob("*.mp4"):
        if video.name == "broken.mp4":
            continue
        csv = tmp_path / f"{video.stem}.csv"
        result = run_script("predict_live_stream.py", "--source", video, "--csv", csv)
        assert result.returncode == 0, result.stderr[-1000:]
        expected = pd.read_csv(csv)
        ours = faces[faces.input == str(video.resolve())].sort_values(["second", "face"])
        assert len(ours) == len(expected) > 10
        assert list(ours.second) == list(expected.second) and list(ours.face) == list(expected.face_id)
        assert (ours[["x", "y", "w", "h"]].to_numpy() == expected[["x", "y", "w", "h"]].to_numpy()).all()
        assert np.abs(np.round(ours[PROBABILITIES].to_numpy(float), 4) - expected[PROBABILITIES].to_numpy()).max() < 1e-6
        assert list(ours.emotion) == [EMOTIONS[k] for k in expected[PROBABILITIES].to_numpy().argmax(1)]


@needs_media
def test_a_second_run_skips_what_is_done_and_gives_the_same_tables(analyzed):
    folder, out, _ = analyzed
    before = pd.read_parquet(out / "faces.parquet")
    result = run_script("analyze.py", folder, "--out", out, "--workers", "1")
    assert "skipping 6 inputs" in result.stderr, result.stderr
    assert "reading 2 inputs" in result.stderr  # the two errors are tried again
    pd.testing.assert_frame_equal(pd.read_parquet(out / "faces.parquet"), before)


def test_bad_outputs_and_inputs_are_refused_in_one_line(tmp_path):
    (tmp_path / "a.jpg").write_text("x")
    assert_clean_error(run_script("analyze.py", tmp_path / "missing", "--out", tmp_path / "out"), "input not found")
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_script("analyze.py", tmp_path / "empty", "--out", tmp_path / "out"), "no photos or videos")
    (tmp_path / "file").write_text("x")
    assert_clean_error(run_script("analyze.py", tmp_path / "a.jpg", "--out", tmp_path / "file"), "is a file")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "faces.parquet").write_text("someone else's")
    assert_clean_error(run_script("analyze.py", tmp_path / "a.jpg", "--out", tmp_path / "theirs"),
                       "did not write it")
    assert (tmp_path / "theirs" / "faces.parquet").read_text() == "someone else's"
    assert_clean_error(run_script("analyze.py", tmp_path / "a.jpg", "--out", tmp_path / "o", "--workers", "0"),
                       "--workers 0")


def copies(folder, n):
    """n copies of each shared video (two units of work per copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        for video in VIDEOS:
            shutil.copy(video, folder / f"{video.stem}-{k}.mp4")
    return folder


def pool_processes(pid):
    """The worker processes of analyze.py's pool (not multiprocessing's resource tracker)."""
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True,
                                           text=True).stdout.split()]


def wait_for_parts(out, n, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if len(list((out / "parts").glob("*.inputs.parquet"))) >= n:
            return True
        time.sleep(0.1)
    return False


@full
@needs_media
def test_a_driver_killed_mid_job_resumes_where_it_stopped(tmp_path):
    folder = copies(tmp_path / "in", 3)
    whole = run_script("analyze.py", folder, "--out", tmp_path / "whole", "--workers", "2")
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "analyze.py"), folder, "--out", out, "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for_parts(out, 2, process)
    workers = pool_processes(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "faces.parquet").exists()
    deadline = time.time() + 10  # its workers end with it, not idle forever with their models
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        time.sleep(0.1)
    assert workers and not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    again = run_script("analyze.py", folder, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = int(again.stderr.split("skipping ")[1].split()[0])
    assert 2 <= skipped < 6
    for name in ("faces.parquet", "inputs.parquet"):
        a, b = pd.read_parquet(tmp_path / "whole" / name), pd.read_parquet(out / name)
        columns = [c for c in a.columns if c not in ("elapsed", "worker", "worker_peak_mb")]
        pd.testing.assert_frame_equal(a[columns], b[columns])


@full
@needs_media
def test_a_worker_killed_mid_job_is_retried_and_every_input_appears_once(tmp_path):
    folder = copies(tmp_path / "in", 3)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "analyze.py"), folder, "--out", out, "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_parts(out, 1, process)
    workers = pool_processes(process.pid)
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    inputs = pd.read_parquet(out / "inputs.parquet")
    assert len(inputs) == 6 and inputs.input.is_unique and (inputs.status == "done").all()
    assert inputs.attempts.max() == 2  # the unit its worker was reading was read again
    faces = pd.read_parquet(out / "faces.parquet")
    assert not faces.duplicated(["input", "second", "face"]).any()
    assert set(faces.input) == set(inputs.input)


@full
@needs_media
def test_a_twenty_minute_video_is_read_in_constant_memory(tmp_path):
    """A 20-minute video (the shared clip looped, 5 frames a second): the resident memory
    of analyze.py while it reads the last fifth is no higher than while it reads the first
    fifth, within a fixed margin (measured: 674 and 675 MB)."""
    video = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i", VIDEOS[0], "-t", "1200", "-vf",
                    "fps=5,scale=320:-2", "-an", "-c:v", "mpeg4", "-q:v", "5", video], check=True, timeout=300)
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "analyze.py"), video, "--out", tmp_path / "out",
                                "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # resident MB while the video is open (the models are loaded before it opens)

    def video_open():
        with contextlib.suppress(OSError):
            return any(os.readlink(f"/proc/{process.pid}/fd/{fd}") == str(video)
                       for fd in os.listdir(f"/proc/{process.pid}/fd"))
        return False

    while process.poll() is None:  # while the video is open: not the start-up, not the tables written after
        with contextlib.suppress(OSError, StopIteration):
            if video_open():
                with open(f"/proc/{process.pid}/status") as status:
                    samples.append(next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024)
        time.sleep(0.1)
    assert process.returncode == 0, process.stderr.read()[-2000:]
    inputs = pd.read_parquet(tmp_path / "out" / "inputs.parquet")
    assert inputs.seconds[0] > 1190 and inputs.status[0] == "done"
    fifth = len(samples) // 5
    assert fifth >= 10, len(samples)
    first, last = max(samples[:fifth]), max(samples[-fifth:])
    print(f"resident memory reading the video: first fifth {first:.0f} MB, last fifth {last:.0f} MB")
    assert last - first < 30


def test_links_pipes_and_names_that_cannot_be_read_are_error_rows_not_tracebacks(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "pipe.mp4")  # opening it to read would wait forever
    with open(os.fsencode(folder) + b"/bad\xff.jpg", "wb") as f:
        f.write(b"not UTF-8")
    result = run_script("analyze.py", folder, "--out", tmp_path, timeout=120)  # --out holds the inputs' folder
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    inputs = pd.read_parquet(tmp_path / "inputs.parquet")
    reasons = {os.path.basename(p): r for p, r in zip(inputs.input, inputs.reason)}
    assert "cannot read" in reasons["loop.jpg"] and reasons["pipe.mp4"] == "not a regular file"
    assert "not UTF-8" in reasons["bad\\xff.jpg"]
    # A file in parts/ that is not a finished input is left aside, said once.
    (tmp_path / "parts" / "garbage.inputs.parquet").write_text("garbage")
    again = run_script("analyze.py", folder, "--out", tmp_path, timeout=120)
    assert "Traceback" not in again.stderr and "left aside 1 file" in again.stderr, again.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "parts").write_text("a file")
    assert_clean_error(run_script("analyze.py", folder, "--out", tmp_path / "other"), "cannot use")
    # A list's line with a NUL byte is an error row; an --out the tables' writer cannot name, one line.
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"nul\x00here.jpg\n")
    assert "not a file name" in str(find_inputs([listed], Settings())[1])
    assert_clean_error(run_script("analyze.py", folder, "--out", os.fsdecode(os.fsencode(tmp_path) + b"/out\xff")),
                       "not UTF-8")


def test_a_unit_whose_faces_part_was_lost_is_read_again(tmp_path):
    parts = Parts(tmp_path)
    parts.commit("u1", [], [{**error_row("/x/a.jpg", "photo", ""), "status": "no face", "key": "k1"}])
    assert parts.done_keys() == {"k1"}
    (tmp_path / "parts" / "u1.faces.parquet").write_bytes(b"")  # a power cut before its bytes reached the disk
    assert parts.done_keys() == set()
    # A part of another version (its input a number) and a broken link are left aside, not a traceback.
    parts.commit("u2", [], [{**error_row(12345, "photo", ""), "status": "no face", "key": "k2"}])
    (tmp_path / "parts" / "u3.inputs.parquet").symlink_to(tmp_path / "nowhere")
    assert set(parts.read("inputs").key) == {"k1"}


def test_a_ray_address_that_does_not_answer_is_one_line_at_once(tmp_path):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "in").mkdir()
    shutil.copy(sorted((MEDIA / "photos").glob("*.jpg"))[0] if MEDIA.exists() else __file__,
                tmp_path / "in" / "a.jpg")
    started = time.time()
    result = run_script("analyze.py", tmp_path / "in", "--out", tmp_path / "out", "--address", f"127.0.0.1:{port}",
                        timeout=120)
    assert_clean_error(result, "cannot reach the Ray cluster")
    assert time.time() - started < 60
