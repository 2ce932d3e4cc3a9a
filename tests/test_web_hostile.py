"""The web app under hostile input: decompression bombs, other sites' pages, DNS rebinding,
a full video queue, odd file names and frames, slow clients, SIGTERM with work in flight.
Every bomb is made here and is small on disk."""
import base64
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pytest

from conftest import SHARED, assert_clean_error, needs_shared, run_script, full
from expressions import browser
from expressions.hostile import disguised_bomb, png_bomb
from expressions.video import FramesTooLarge, open_video, restrict_upload_demuxers, video_container
from expressions.web import create_app
from starlette.websockets import WebSocketDisconnect
from test_faces_video import astronaut_bgr, write_video
from test_web import WS_URL, local_client, needs_browser

MB = 1024 * 1024


def jpeg(image):
    return cv2.imencode(".jpg", image)[1].tobytes()


def post(client, data, name="photo.png", **headers):
    return client.post("/api/predict", files={"image": (name, data, "image/png")}, headers=headers)


@pytest.fixture(scope="module")
def app_and_client():
    app = create_app(tta="none", max_upload_mb=2, max_video_mb=3, max_video_jobs=1, max_video_disk_mb=4)
    with local_client(app) as client:
        yield app, client


def test_image_bombs_get_413_before_they_are_decoded(app_and_client):
    _, client = app_and_client
    bomb = png_bomb(12000, 12000)  # 144 megapixels, over the server's 50
    assert len(bomb) < 2 * MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    response = post(client, bomb, "bomb.png")
    assert response.status_code == 413
    assert "12000x12000" in response.json()["detail"] and "50 megapixels" in response.json()["detail"]
    # Decoded, it would have taken 432 MB (and more for the grey copy): it never was.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < peak + 200
    header_only = post(client, png_bomb(60000, 60000, pixels=False), "huge.png")
    assert header_only.status_code == 413 and "60000x60000" in header_only.json()["detail"]
    # The server still reads an ordinary photo afterwards.
    assert len(post(client, jpeg(astronaut_bgr()), "face.jpg").json()["faces"]) == 1


def test_websocket_bombs_text_frames_and_odd_names_get_one_line_answers(app_and_client):
    _, client = app_and_client
    with client.websocket_connect(WS_URL) as ws:
        ws.send_text("hello")
        assert "binary message" in ws.receive_json()["error"]
        ws.send_bytes(png_bomb(60000, 60000, pixels=False))
        assert "60000x60000" in ws.receive_json()["error"]
        ws.send_bytes(jpeg(astronaut_bgr()))
        assert len(ws.receive_json()["faces"]) == 1  # the stream goes on
    for tiny in (b"a", b"BM", b"abc"):  # a few bytes: every format's probe must cope
        assert post(client, tiny, "tiny.jpg").status_code == 400
        with client.websocket_connect(WS_URL) as ws:
            ws.send_bytes(tiny)
            assert "not an image" in ws.receive_json()["error"]
    odd = post(client, b"GIF89a not really", "a\x00b/../../etc/passwd.gif")
    assert odd.status_code == 400 and "\x00" not in odd.json()["detail"]
    junk = client.post("/api/video", files={"video": ("clip\x00.mp4", b"junk", "video/mp4")})
    assert junk.status_code == 415 and "\x00" not in junk.json()["detail"]
    # An MP4's first bytes, then junk: stored under a name of the server's own, never the client's.
    video = client.post("/api/video", files={"video": ("clip\x00.mp4", b"\0\0\0\x18ftypisom" + b"junk" * 9,
                                                       "video/mp4")})
    assert video.status_code == 200
    job = video.json()["job"]
    deadline = time.time() + 30
    while (status := client.get(f"/api/video/{job}").json())["state"] not in ("done", "error"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert status["state"] == "error" and "not a video" in status["error"]
    download = client.get(f"/api/video/{job}/timeline.csv")  # a failed job says so, not "still being read"
    assert download.status_code == 409 and "failed" in download.json()["detail"]


def test_a_disguised_bomb_a_strip_and_a_huge_annotation_get_bounded_answers(app_and_client):
    _, client = app_and_client
    # A WebP that a plugin without a first-bytes check would take for a small Photo CD image.
    bomb = disguised_bomb()  # made first: making it takes the memory of its pixels once
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    response = post(client, bomb, "bomb.webp")
    assert response.status_code == 413 and "7100x7100" in response.json()["detail"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < peak + 200  # never decoded (151 MB)
    # A strip 3000x2 (no face fits when it is scaled for the search) and a picture wider than
    # JPEG allows: answered, the annotated picture scaled to the server's bounds.
    for width, height in ((3000, 2), (66000, 8)):
        strip = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))[1].tobytes()
        response = client.post("/api/predict", params={"annotate": "true"}, files={"image": ("s.png", strip, "image/png")})
        assert response.status_code == 200 and response.json()["faces"] == [], response.text[:200]
        shown = cv2.imdecode(np.frombuffer(base64.b64decode(response.json()["annotated"].split(",")[1]), np.uint8), 1)
        assert max(shown.shape[:2]) <= 4096 and shown.shape[0] * shown.shape[1] <= 2e6


def wait_for_idle_video_queue(jobs, seconds=60):
    deadline = time.time() + seconds
    while any(job["state"] in ("queued", "running") for job in list(jobs.jobs.values())):
        assert time.time() < deadline
        time.sleep(0.1)


def test_uploaded_videos_are_known_by_their_container_not_their_name(app_and_client, tmp_path):
    app, client = app_and_client
    wait_for_idle_video_queue(app.state.jobs)  # max_video_jobs=1
    # A playlist naming a video of the server's disk: FFmpeg would read that file and the
    # job would serve its frames back. Refused, as an image sent as a video is.
    private = write_video(tmp_path / "private.mp4", [astronaut_bgr()] * 10, fps=10)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{private}\n#EXT-X-ENDLIST\n".encode()
    for name, data in (("x.m3u8", playlist), ("photo.mp4", png_bomb(64, 64))):
        response = client.post("/api/video", files={"video": (name, data, "video/mp4")})
        assert response.status_code == 415 and "not a video file" in response.json()["detail"], name
    # An image whose bytes 4-8 spell an MP4 box passes that first look; only FFmpeg opens
    # uploads, so OpenCV's image-sequence reader does not decode it as a one-frame video.
    fake = bytearray(cv2.imencode(".bmp", astronaut_bgr())[1].tobytes())
    fake[4:8] = b"free"
    job = client.post("/api/video", files={"video": ("fake.mp4", bytes(fake), "video/mp4")}).json()["job"]
    wait_for_idle_video_queue(app.state.jobs)
    assert "not a video the server can decode" in client.get(f"/api/video/{job}").json()["error"]
    # A real video wider than the video codec can write (8,191 pixels): its timeline, no annotated video.
    wide = tmp_path / "wide.avi"
    writer = cv2.VideoWriter(str(wide), cv2.VideoWriter_fourcc(*"MJPG"), 5, (8200, 16))
    for _ in range(5):
        writer.write(np.full((16, 8200, 3), 90, np.uint8))
    writer.release()
    with pytest.raises(FramesTooLarge, match="8200x16 pixels"):  # a job's frames are measured before one is read
        open_video(str(wide), max_megapixels=0.1)
    job = client.post("/api/video", files={"video": ("wide.avi", wide.read_bytes(), "video/x-msvideo")}).json()["job"]
    wait_for_idle_video_queue(app.state.jobs)
    status = client.get(f"/api/video/{job}").json()
    assert status["state"] == "done" and status["frames"] == 5 and status["annotated"] is False, status
    assert client.get(f"/api/video/{job}/timeline.csv").status_code == 200
    assert client.get(f"/api/video/{job}/annotated.mp4").status_code == 404


UPLOAD_FORMATS = {"flv": "-c:v flv1", "wmv": "-c:v wmv2", "ogv": "-c:v libtheora", "webm": "-c:v libvpx",
                  "mov": "-c:v mjpeg", "mpg": "-c:v mpeg2video -f mpeg", "m2v": "-c:v mpeg2video -f mpeg2video",
                  "m2ts": "-c:v libx264 -f mpegts -mpegts_m2ts_mode 1", "h264": "-c:v libx264 -f h264"}


def test_every_container_the_server_names_is_read_and_a_playlist_is_not(tmp_path, monkeypatch):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: the containers cannot be made")
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)  # restored after the test
    restrict_upload_demuxers()  # as the server does at start
    source = write_video(tmp_path / "source.mp4", [np.roll(astronaut_bgr()[::8, ::8], 3 * k, 1) for k in range(10)])
    read = {}
    for name, options in UPLOAD_FORMATS.items():
        made = tmp_path / f"made.{name}"
        if subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), *options.split(), str(made)]).returncode:
            continue  # this ffmpeg lacks that encoder
        suffix = video_container(made.read_bytes()[:1024])
        stored = made.rename(tmp_path / f"upload-{name}{suffix}")  # as the server stores it
        cap = open_video(str(stored), 50, ffmpeg_only=True)
        read[name] = sum(1 for _ in iter(lambda: cap.read()[0], False)) if cap else 0
    assert read and all(frames == 10 for frames in read.values()), read
    playlist = tmp_path / "list.m3u8"  # named as FFmpeg wants it: still not opened
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{source}\n#EXT-X-ENDLIST\n")
    assert video_container(playlist.read_bytes()) is None and open_video(str(playlist), ffmpeg_only=True) is None


def test_the_video_queue_and_its_disk_space_are_bounded(app_and_client, tmp_path):
    app, client = app_and_client
    clip = write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 60, fps=10).read_bytes()
    first = client.post("/api/video", files={"video": ("a.mp4", clip, "video/mp4")})
    assert first.status_code == 200
    folders = len(list(app.state.jobs.root.iterdir()))
    second = client.post("/api/video", files={"video": ("b.mp4", clip, "video/mp4")})  # max_video_jobs=1
    if client.get(f"/api/video/{first.json()['job']}").json()["state"] in ("queued", "running"):
        assert second.status_code == 429 and "waiting or being read" in second.json()["detail"]
        assert len(list(app.state.jobs.root.iterdir())) == folders  # the refused upload was not stored
    job = (second if second.status_code == 200 else first).json()["job"]
    deadline = time.time() + 60
    while client.get(f"/api/video/{job}").json()["state"] not in ("done", "error"):
        assert time.time() < deadline
        time.sleep(0.1)
    # 4 MB of disk for videos: three uploads of 1.5 MB cannot all stay; the oldest finished
    # jobs make room, and an upload that cannot fit beside a running one gets 429.
    statuses, big = [], clip + bytes(int(1.5 * MB))
    for name in ("c.mp4", "d.mp4", "e.mp4"):
        statuses.append(client.post("/api/video", files={"video": (name, big, "video/mp4")}).status_code)
        time.sleep(0.5)
    assert set(statuses) <= {200, 429} and 200 in statuses
    assert app.state.jobs.disk_used() <= 4 * MB


def test_a_video_longer_than_the_servers_limit_is_read_up_to_it_and_says_so(app_and_client, tmp_path,
                                                                              monkeypatch):
    app, client = app_and_client
    jobs = app.state.jobs
    monkeypatch.setattr(jobs, "max_frames", 25)

    def job_of(frames):
        clip = write_video(tmp_path / "clip.mp4", [astronaut_bgr()[::4, ::4]] * frames).read_bytes()  # 10 fps
        wait_for_idle_video_queue(jobs)  # max_video_jobs=1
        response = client.post("/api/video", files={"video": ("clip.mp4", clip, "video/mp4")})
        assert response.status_code == 200, response.text
        deadline = time.time() + 60
        while (status := client.get(f"/api/video/{response.json()['job']}").json())["state"] not in ("done", "error"):
            assert time.time() < deadline
            time.sleep(0.1)
        assert status["state"] == "done", status
        timeline = client.get(f"/api/video/{response.json()['job']}/timeline.csv")
        return status, timeline.text

    status, timeline = job_of(40)
    assert status["frames"] == 25 and status["total_frames"] == 25 and "first 25 frames" in status["note"]
    assert [second["second"] for second in status["seconds"]] == [0, 1, 2]  # the last, partial second too
    assert "00:00:02" in timeline and "00:00:03" not in timeline
    exact, _ = job_of(25)  # at the limit: all of it, no note
    assert exact["frames"] == 25 and exact["note"] is None


def test_uploads_sent_at_once_cannot_all_pass_the_queue(app_and_client):
    app, client = app_and_client
    jobs = app.state.jobs  # max_video_jobs=1, max_video_disk_mb=4
    wait_for_idle_video_queue(jobs)  # the test before may leave its last upload being read
    first, why = jobs.reserve(MB)  # admitted before its body is read: counted from then on
    assert first and why is None
    second, why = jobs.reserve(MB)
    assert second is None and "waiting or being read" in why
    jobs.release(first)
    third, why = jobs.reserve(5 * MB)  # over the disk space
    assert third is None and "space for videos" in why
    fourth, _ = jobs.reserve(MB)
    assert fourth
    jobs.release(fourth)
    chunks = (b"\0" * 1024 for _ in range(4))  # no Content-Length: it could not be reserved
    response = client.post("/api/video", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_other_sites_pages_and_rebound_host_names_get_403(app_and_client):
    _, client = app_and_client
    photo = jpeg(astronaut_bgr())
    evil = {"origin": "http://evil.example"}
    assert post(client, photo, **evil).status_code == 403
    assert post(client, photo, origin="null").status_code == 403  # sandboxed frames, file:// pages
    assert client.post("/api/video", files={"video": ("a.mp4", b"x", "video/mp4")}, headers=evil).status_code == 403
    rebound = client.get("/api/health", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 403 and "Host" in rebound.json()["detail"]
    with pytest.raises(Exception):  # closed before it opens: browsers see 403
        with client.websocket_connect(WS_URL, headers=evil) as ws:
            ws.send_bytes(photo)
            ws.receive_json()
    # A GET without Origin (an <img>, a no-cors fetch) from another site's page: refused;
    # a link the user follows to the server: answered.
    assert client.get("/api/health", headers={"sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors"}).status_code == 403
    assert client.get("/", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}).status_code == 200
    assert post(client, photo, origin="http://127.0.0.1:8000").status_code == 200  # its own page
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/health", headers={"host": "[::1]evil.example:8000"}).status_code == 403
    two_origins = [("origin", "http://evil.example"), ("origin", "http://127.0.0.1:8000")]
    assert client.get("/api/health", headers=httpx.Headers(two_origins)).status_code == 403


def test_an_allowed_origin_may_use_the_api():
    app = create_app(tta="none", pipelines=1, allow_origins=["https://App.Example/"])
    with local_client(app) as client:
        response = post(client, jpeg(astronaut_bgr()), origin="https://app.example")
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "https://app.example"
        assert post(client, jpeg(astronaut_bgr()), origin="https://other.example").status_code == 403
    with pytest.raises(Exception, match="--allow-origin"):
        create_app(allow_origins=["not an origin"])


def test_surplus_and_idle_streams_are_closed_so_they_cannot_hold_connections():
    app = create_app(tta="none", pipelines=1, max_streams=1, stream_idle_seconds=1)
    with local_client(app) as client:
        with client.websocket_connect(WS_URL) as ws:
            ws.send_bytes(jpeg(astronaut_bgr()))
            assert len(ws.receive_json()["faces"]) == 1
            with client.websocket_connect(WS_URL) as surplus:  # the server's one stream is in use
                with pytest.raises(WebSocketDisconnect) as refused:
                    surplus.receive_json()
            assert refused.value.code == 1013 and "in use" in refused.value.reason
            with pytest.raises(WebSocketDisconnect) as idle:  # no frame for a second: closed
                ws.receive_json()
            assert idle.value.code == 1001
        for attempt in range(20):  # the slot is free again (once the closed stream's handler has ended)
            try:
                with client.websocket_connect(WS_URL) as ws:
                    ws.send_bytes(jpeg(astronaut_bgr()))
                    assert len(ws.receive_json()["faces"]) == 1
                break
            except WebSocketDisconnect:
                time.sleep(0.1)
        else:
            pytest.fail("no stream could be opened after the idle one was closed")


def closed_by_server(sock):
    """True if the server closed this connection (EOF or reset) within 3 s."""
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


def serve(*args, env=None):
    """serve.py in a subprocess; returns (process, url) once it serves."""
    port = browser.free_port()
    process = subprocess.Popen([sys.executable, "scripts/serve.py", "--port", str(port), *args], cwd=browser.ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.time() + 90
    while time.time() < deadline:
        line = process.stdout.readline()
        if line.startswith("Serving on") or (not line and process.poll() is not None):
            break
    assert process.poll() is None, process.stdout.read()
    return process, f"http://127.0.0.1:{port}"


@full
@needs_shared
def test_serve_closes_slow_clients_and_stops_cleanly_on_sigterm_with_work_in_flight(tmp_path):
    env = {"TMPDIR": str(tmp_path)}  # its temporary folder lands here, to check that it goes
    process, url = serve("--request-timeout", "2", env=env)
    port = int(url.rsplit(":", 1)[1])
    try:
        # Slow clients: headers, or a body, a byte at a time; all closed after the timeout.
        slow = []
        for n in range(30):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (
                b"Content-Length: 100000\r\nContent-Type: multipart/form-data; boundary=x\r\n\r\n--x" if n % 2 else b"X-"))
            slow.append(s)
        time.sleep(1)
        assert httpx.get(url + "/api/health", timeout=10).status_code == 200  # still answers meanwhile
        time.sleep(3.5)
        assert all(closed_by_server(s) for s in slow), "a slow client was still held open"
        # Work in flight: two videos queued, a WebSocket stream, photo requests.
        video = (SHARED / "media" / "fer_woman2.mp4").read_bytes()
        for _ in range(2):
            assert httpx.post(url + "/api/video", files={"video": ("v.mp4", video, "video/mp4")}).status_code == 200
        photo = jpeg(astronaut_bgr())

        def stream():
            from websockets.sync.client import connect
            try:
                with connect(url.replace("http", "ws") + "/api/stream") as ws:
                    while True:
                        ws.send(photo)
                        ws.recv()
            except Exception:  # noqa: BLE001 (the server going away ends it)
                pass

        def photos():
            try:
                while True:
                    httpx.post(url + "/api/predict", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=30)
            except httpx.HTTPError:
                pass

        for work in (stream, photos, photos):
            threading.Thread(target=work, daemon=True).start()
        time.sleep(2)
        assert list(tmp_path.iterdir())  # the videos' folder exists while it serves
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-2000:]
    assert "Traceback" not in output and output.strip().endswith("stopped")
    assert not list(tmp_path.iterdir())  # temporary files removed


def test_serve_refuses_bad_limits_with_one_line_and_leaves_nothing(tmp_path):
    result = subprocess.run([sys.executable, "scripts/serve.py", "--pipelines", "0"], cwd=browser.ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert_clean_error(result, "--pipelines 0")
    assert_clean_error(run_script("serve.py", "--max-megapixels", "nan"), "--max-megapixels")
    assert_clean_error(run_script("serve.py", "--max-streams", "128"), "--max-streams", "--max-connections")
    assert not list(tmp_path.iterdir())


@full
@needs_browser
def test_a_page_of_another_site_cannot_use_the_server_in_chromium(tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements.txt)")
    with browser.running_server("--tta", "none", "--pipelines", "1") as (url, _):
        tried = browser.foreign_page_attempts(url, tmp_path)
    # The server's answers to the other site's page: 403 for each request, the socket refused.
    assert tried["statuses"] == {"/api/health": 403, "/api/predict": 403}, tried
    assert tried["websocket"] == "refused", tried
    # DNS rebinding: the same server reached under another site's name is refused too.
    assert tried["rebound_status"] == 403, tried
