"""The web app: the JSON API through FastAPI's TestClient with the real model, serve.py as a
user starts and stops it, and the page in a real headless Chromium with a fake webcam."""
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import cv2
import numpy as np
import pytest

from conftest import SHARED, assert_clean_error, needs_shared, run_script, full
from expressions import EMOTIONS, VERSION
from expressions import model as nets
from expressions.pipeline import TIMELINE_COLUMNS, EmotionReader
from test_faces_video import astronaut_bgr, write_video

pytest.importorskip("fastapi", reason="the web app's requirements (fastapi, uvicorn) are not installed")
with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from expressions import browser  # noqa: E402
from expressions.web import create_app  # noqa: E402

PHOTOS = SHARED / "media" / "photos"


def jpeg(image):
    return cv2.imencode(".jpg", image)[1].tobytes()


def side_by_side(*images, height=360):
    return np.hstack([cv2.resize(im, (round(im.shape[1] * height / im.shape[0]), height)) for im in images])


@pytest.fixture(scope="module")
def client():
    # The tta of predict.py, so the answers can be compared with the scripts' pipeline.
    with local_client(create_app(tta=nets.DEFAULT_TTA, max_upload_mb=1, max_video_mb=5)) as c:
        yield c


def local_client(app):
    """A TestClient that calls the app as a browser on this machine would: Host 127.0.0.1
    (the app refuses other Host headers). WebSockets take the full URL, ws://127.0.0.1/..."""
    return TestClient(app, base_url="http://127.0.0.1:8000")


WS_URL = "ws://127.0.0.1:8000/api/stream"


def post_image(client, data, name="photo.jpg", **params):
    return client.post("/api/predict", params=params, files={"image": (name, data, "image/jpeg")})


def test_health_page_and_docs(client):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "model": "my_own_model.pkl", "detector": "yunet", "tta": nets.DEFAULT_TTA,
                      "runtime": health["runtime"], "stream_model": "fast_model.pkl", "stream_tta": "alternate",
                      "stream_runtime": health["stream_runtime"], "version": VERSION}
    assert health["runtime"].startswith("tflite") and health["stream_runtime"].startswith("tflite")
    page = client.get("/")
    assert page.status_code == 200 and "getUserMedia" in client.get("/static/app.js").text
    assert "/api/stream" in client.get("/static/app.js").text and "<canvas id=\"overlay\">" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from another site
    docs = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/health", "/api/video"} <= set(docs["paths"])


@needs_shared
def test_predict_answers_as_the_scripts_do_on_the_shared_photos(client):
    reader = EmotionReader(nets.frame_predictor("own", nets.DEFAULT_TTA)[0])
    for path in sorted(PHOTOS.glob("*.jpg"))[:4]:
        response = post_image(client, path.read_bytes(), path.name)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"faces", "model", "detector", "tta", "runtime"}
        face = body["faces"][0]
        assert set(face) == {"box", "emotion", "probability", "probabilities", "valence", "arousal", "landmarks"}
        assert list(face["probabilities"]) == EMOTIONS
        # TensorFlow Lite rows are renormalised to sum to 1 (then rounded for JSON).
        assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
        assert -1 <= face["valence"] <= 1 and -1 <= face["arousal"] <= 1
        image = cv2.imread(str(path))
        faces, _, proba = reader(image, still=True)
        assert face["box"] == list(faces[0].box)
        assert face["probability"] == pytest.approx(float(proba[0].max()), abs=1e-3)
        x, y, w, h = face["box"]
        assert 0 <= x and 0 <= y and x + w <= image.shape[1] and y + h <= image.shape[0]


@needs_shared
def test_two_faces_no_face_and_the_annotated_image(client):
    photos = sorted(PHOTOS.glob("*.jpg"))
    pair = side_by_side(cv2.imread(str(photos[0])), cv2.imread(str(photos[1])))
    body = post_image(client, jpeg(pair), annotate="true").json()
    assert len(body["faces"]) == 2
    middle = pair.shape[1] / 2
    assert sorted(f["box"][0] + f["box"][2] / 2 > middle for f in body["faces"]) == [False, True]
    annotated = cv2.imdecode(np.frombuffer(__import__("base64").b64decode(body["annotated"].split(",")[1]),
                                           np.uint8), cv2.IMREAD_COLOR)
    assert annotated.shape == pair.shape and np.abs(annotated.astype(int) - pair).max() > 100  # boxes drawn

    grey = np.full((480, 640, 3), 128, np.uint8)
    response = post_image(client, jpeg(grey), annotate="true")
    assert response.status_code == 200 and response.json()["faces"] == []
    assert response.json()["annotated"].startswith("data:image/jpeg;base64,")


def test_bad_requests_get_one_line_json_errors(client):
    cases = [
        (post_image(client, b"this is text", "notes.txt"), 400, "not an image"),
        (post_image(client, b""), 400, "not an image"),
        (post_image(client, jpeg(astronaut_bgr())[:3000]), 400, "corrupt"),  # a truncated JPEG
        (post_image(client, b"\xff" * (2 * 1024 * 1024)), 413, "limit is 1 MB"),
        (client.post("/api/predict"), 422, "image"),
        (client.get("/api/predict"), 405, "Method Not Allowed"),
        (client.get("/api/nowhere"), 404, "Not Found"),
        (client.get("/api/video/0123"), 404, "no video job"),
    ]
    # A body sent without a Content-Length is cut off at the limit too.
    chunks = (b"\xff" * 65536 for _ in range(40))
    cases.append((client.post("/api/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}),
                  413, "limit is 1 MB"))
    for response, status, fragment in cases:
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and fragment in detail, detail


def test_concurrent_requests_get_the_same_answers_as_one_at_a_time(client):
    images = [astronaut_bgr(), side_by_side(astronaut_bgr(), astronaut_bgr()[:, ::-1]), astronaut_bgr()[:, ::-1]]
    expected = [post_image(client, jpeg(im)).json()["faces"] for im in images]
    results, errors = {}, []

    def worker(n):
        try:
            for k in range(3):
                results[(n, k)] = post_image(client, jpeg(images[(n + k) % 3])).json()["faces"]
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[(n, k)] == expected[(n + k) % 3] for n, k in results) and len(results) == 24


def test_stream_keeps_ids_and_survives_a_bad_frame(client):
    pair = side_by_side(astronaut_bgr(), astronaut_bgr()[:, ::-1])
    with client.websocket_connect(WS_URL) as ws:
        answers = []
        for shift in (0, 4, 8):
            ws.send_bytes(jpeg(np.roll(pair, shift, axis=1)))
            answers.append(ws.receive_json())
        ws.send_bytes(b"not a frame")
        assert "not an image" in ws.receive_json()["error"]
        ws.send_bytes(jpeg(pair))
        answers.append(ws.receive_json())
    for answer in answers:
        assert answer["width"] == pair.shape[1] and len(answer["faces"]) == 2
        left, right = sorted(answer["faces"], key=lambda f: f["box"][0])
        assert (left["id"], right["id"]) == (1, 2)  # the same face keeps its id from frame to frame
        assert left["emotion"] in EMOTIONS and 0 < left["probability"] <= 1


def test_video_upload_gives_progress_timeline_and_downloads(client, tmp_path):
    video = write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 50, fps=25)  # 2 seconds
    job = client.post("/api/video", files={"video": ("clip.mp4", video.read_bytes(), "video/mp4")}).json()["job"]
    deadline = time.time() + 60
    while (status := client.get(f"/api/video/{job}").json())["state"] not in ("done", "error"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert status["state"] == "done" and status["frames"] == 50 and status["progress"] == 1
    assert [s["time"] for s in status["seconds"]] == ["00:00:00", "00:00:01"]
    assert all(len(s["faces"]) == 1 and s["faces"][0]["frames"] == 25 for s in status["seconds"])
    csv = client.get(f"/api/video/{job}/timeline.csv").text.splitlines()
    assert csv[0].split(",") == TIMELINE_COLUMNS and len(csv) == 3
    annotated = tmp_path / "annotated.mp4"
    annotated.write_bytes(client.get(f"/api/video/{job}/annotated.mp4").content)
    assert int(cv2.VideoCapture(str(annotated)).get(cv2.CAP_PROP_FRAME_COUNT)) == 50
    assert client.get(f"/api/video/{job}/other.txt").status_code == 404

    not_video = client.post("/api/video", files={"video": ("x.mp4", b"not a video", "video/mp4")})
    assert not_video.status_code == 415 and "x.mp4 is not a video file" in not_video.json()["detail"]
    truncated = write_video(tmp_path / "t.mp4", [astronaut_bgr()] * 5).read_bytes()[:48]  # an MP4's start only
    bad = client.post("/api/video", files={"video": ("x.mp4", truncated, "video/mp4")}).json()["job"]
    while (status := client.get(f"/api/video/{bad}").json())["state"] not in ("done", "error"):
        time.sleep(0.1)
    assert status["state"] == "error" and status["error"] == "x.mp4 is not a video the server can decode"
    big = client.post("/api/video", files={"video": ("big.mp4", b"\0" * (6 * 1024 * 1024), "video/mp4")})
    assert big.status_code == 413 and "limit is 5 MB" in big.json()["detail"]


def test_video_files_live_in_a_temporary_folder_removed_at_shutdown(tmp_path):
    video = write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 10, fps=10)
    app = create_app()
    with local_client(app) as c:
        job = c.post("/api/video", files={"video": ("clip.mp4", video.read_bytes(), "video/mp4")}).json()["job"]
        while c.get(f"/api/video/{job}").json()["state"] not in ("done", "error"):
            time.sleep(0.1)
        folder = app.state.jobs.root / job
        assert (folder / "annotated.mp4").exists() and (folder / "timeline.csv").exists()
    assert not app.state.jobs.root.exists()


@full
def test_serve_starts_says_where_and_stops_cleanly_on_ctrl_c():
    started = time.time()
    with browser.running_server("--tta", "none") as (url, process):
        startup = time.time() - started
        health = json.loads(urllib.request.urlopen(url + "/api/health", timeout=10).read())
        assert health["tta"] == "none"
        process.send_signal(signal.SIGINT)
        stopped = time.time()
        assert process.wait(timeout=15) == 0
        assert time.time() - stopped < 5  # a clean stop within a few seconds
    assert startup < 60


@full
def test_serve_refuses_a_taken_port_and_warns_off_localhost():
    with browser.running_server() as (url, _):
        result = run_script("serve.py", "--port", url.rsplit(":", 1)[1], timeout=60)
    assert_clean_error(result, "cannot listen on 127.0.0.1", "choose another --port")
    port = browser.free_port()
    process = subprocess.Popen([sys.executable, "scripts/serve.py", "--host", "0.0.0.0", "--port", str(port)],
                               cwd=browser.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        warning = process.stderr.readline()
        assert warning.startswith("warning: listening on 0.0.0.0") and "anyone" in warning
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    result = run_script("serve.py", "--port", "70000")
    assert_clean_error(result, "--port 70000")


needs_browser = pytest.mark.skipif(browser.find_chromium() is None,
                                   reason="no Chromium here (apt-get install chromium; .ci/run installs it)")


@full
@needs_shared
@needs_browser
def test_the_page_in_chromium_shows_the_webcam_face_and_reads_photos_and_videos(tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements.txt)")
    camera = browser.write_y4m(SHARED / "media" / "fer_woman2.mp4", tmp_path / "camera.y4m", seconds=3)
    clip = write_video(tmp_path / "clip.mp4", [astronaut_bgr()] * 20, fps=10)
    with browser.running_server() as (url, _):
        with browser.browser_with_fake_webcam(camera) as page:
            shown = browser.watch_live_page(page, url, seconds=2.5)
            photo = browser.upload_photo(page, sorted(PHOTOS.glob("*.jpg"))[0])
            video = browser.upload_video(page, clip)
        with browser.browser_with_fake_webcam(None) as page:  # a machine without a camera
            page.goto(url)
            page.click("#start-camera")
            page.wait_for_function("!document.getElementById('camera-message').innerText.startsWith('Press')")
            no_camera = page.inner_text("#camera-message")
    assert shown["title"] == "Probabilities, face 1" and shown["top_emotion"] in EMOTIONS
    assert shown["overlay_pixels"] > 500  # the box and its label are drawn over the video
    assert shown["second_rows"] and all(row.split("\t")[2] in EMOTIONS for row in shown["second_rows"])
    assert shown["message"] == ""
    assert photo["image"].startswith("data:image/jpeg;base64,") and len(photo["rows"]) == 1
    assert photo["rows"][0].split("\t")[2] in EMOTIONS
    assert video["message"].startswith("20 frames, 2 seconds") and len(video["rows"]) == 2
    assert video["links"][0].endswith("/timeline.csv") and video["links"][1].endswith("/annotated.mp4")
    assert "No camera found" in no_camera or "refused" in no_camera


@full
@needs_shared
def test_a_video_job_gives_the_seconds_predict_live_stream_gives(tmp_path):
    video = SHARED / "media" / "liveportrait_d10.mp4"  # 15 seconds
    script = run_script("predict_live_stream.py", "--source", video, "--csv", tmp_path / "script.csv")
    assert script.returncode == 0, script.stderr
    # The same defaults (the fast model, alternate; faces searched in every 2nd frame): the same seconds, to the digit.
    with local_client(create_app(tta="flip", pipelines=1)) as c:
        job = c.post("/api/video", files={"video": (video.name, video.read_bytes(), "video/mp4")}).json()["job"]
        deadline = time.time() + 120
        while c.get(f"/api/video/{job}").json()["state"] not in ("done", "error"):
            assert time.time() < deadline
            time.sleep(0.2)
        served = c.get(f"/api/video/{job}/timeline.csv").text
    assert served == (tmp_path / "script.csv").read_text() and len(served.splitlines()) == 16
