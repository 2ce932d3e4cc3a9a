"""The web app seen through a real browser: serve.py started on a free local port, and
headless Chromium (Debian's `chromium`) with a fake webcam that plays a face video, driven
by Playwright. Used by the browser test and by scripts/measure/web_screenshot.py."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import ROOT, UserError
from .video import open_video

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium():
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def write_y4m(video, path, seconds=4.0, size=(640, 480)):
    """The first `seconds` of a video as an uncompressed .y4m (what Chromium's fake webcam
    plays, in a loop), scaled to fit `size` on black."""
    import cv2
    import numpy as np
    cap = open_video(str(video))
    if cap is None:
        raise UserError(f"cannot read video {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{size[0]} H{size[1]} F{round(fps)}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(int(seconds * fps)):
            ok, frame = cap.read()
            if not ok:
                break
            scale = min(size[0] / frame.shape[1], size[1] / frame.shape[0])
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas = np.zeros((size[1], size[0], 3), np.uint8)
            y0, x0 = (size[1] - frame.shape[0]) // 2, (size[0] - frame.shape[1]) // 2
            canvas[y0:y0 + frame.shape[0], x0:x0 + frame.shape[1]] = frame
            out.write(b"FRAME\n" + cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420).tobytes())
    cap.release()
    return Path(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args, port=None, timeout=60):
    """serve.py in a subprocess on 127.0.0.1; yields (url, process) once it says it is
    serving; stopped with Ctrl-C (SIGINT) on the way out."""
    import signal
    port = port or free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port), *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline, lines = time.time() + timeout, []
    try:
        while time.time() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {process.returncode}: {''.join(lines)[-500:]}")
            lines.append(line)
            if line.startswith("Serving on"):
                break
        else:
            raise RuntimeError(f"serve.py did not start within {timeout} s: {''.join(lines)[-500:]}")
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def browser_with_fake_webcam(y4m, extra_args=()):
    """A headless Chromium page whose webcam plays `y4m`, camera permission granted; with
    y4m None, a page on a machine without a camera."""
    from playwright.sync_api import sync_playwright
    chromium = find_chromium()
    if chromium is None:
        raise UserError("no Chromium found: apt-get install chromium")
    camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={y4m}"] if y4m else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", *camera, *extra_args])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield page
        finally:
            browser.close()


def watch_live_page(page, url, seconds=4.0, timeout=30.0):
    """Open the page, start the camera and wait until a face with an emotion is shown and
    `seconds` more have passed (so the per-second table has rows). Returns what the page
    shows: the label of the followed face, the per-second rows and the pixels drawn on the
    overlay."""
    page.goto(url)
    page.click("#start-camera")
    page.wait_for_function("document.querySelector('#bars .bar.top') !== null", timeout=timeout * 1000)
    page.wait_for_timeout(seconds * 1000)
    return {
        "title": page.inner_text("#bars-title"),
        "top_emotion": page.inner_text("#bars .bar.top span"),
        "stats": page.inner_text("#camera-stats"),
        "second_rows": page.eval_on_selector_all("#live-seconds tbody tr", "rows => rows.map(r => r.innerText)"),
        "overlay_pixels": page.evaluate(
            "() => { const c = document.getElementById('overlay');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"),
        "message": page.inner_text("#camera-message"),
    }


def upload_photo(page, photo, timeout=30.0):
    """The Photo tab: upload `photo`, wait for the annotated image; returns the image's
    data URL prefix, the table rows and the message."""
    page.click("button.tab[data-tab=photo]")
    page.set_input_files("#photo-file", str(photo))
    page.wait_for_function("document.getElementById('photo-result').src.startsWith('data:image/jpeg')",
                           timeout=timeout * 1000)
    return {"image": page.get_attribute("#photo-result", "src")[:40],
            "rows": page.eval_on_selector_all("#photo-faces tbody tr", "rows => rows.map(r => r.innerText)"),
            "message": page.inner_text("#photo-message")}


def upload_video(page, video, timeout=60.0):
    """The Video tab: upload `video`, wait for the download links; returns the message, the
    per-second rows and the two links."""
    page.click("button.tab[data-tab=video]")
    page.set_input_files("#video-file", str(video))
    page.wait_for_selector("#video-links:not([hidden])", timeout=timeout * 1000)
    return {"message": page.inner_text("#video-message"),
            "rows": page.eval_on_selector_all("#video-seconds tbody tr", "rows => rows.map(r => r.innerText)"),
            "links": [page.get_attribute("#video-csv", "href"), page.get_attribute("#video-annotated", "href")]}


FOREIGN_PAGE = """<!doctype html><meta charset="utf-8"><title>another site</title><script>
window.results = {};
const server = "SERVER";
fetch(server + "/api/health", {mode: "no-cors"}).then(() => {}, () => {});
const form = new FormData();
form.append("image", new Blob([new Uint8Array([137, 80, 78, 71])], {type: "image/png"}), "x.png");
fetch(server + "/api/predict", {method: "POST", body: form, mode: "no-cors"}).then(() => {}, () => {});
const socket = new WebSocket(server.replace("http", "ws") + "/api/stream");
socket.onopen = () => { results.websocket = "open"; };
socket.onclose = () => { results.websocket = results.websocket || "refused"; };
</script>"""


def foreign_page_attempts(server_url, folder, timeout=20.0):
    """What a page of another site (another origin: a second local port) gets when it
    calls the server at `server_url`: the server's status for each request as Chromium saw
    it (whether or not the page may read it), whether its WebSocket opened, and the status
    when the server is reached under another site's name (DNS rebinding, simulated with
    Chromium's host resolver rules)."""
    import functools
    import http.server
    import threading
    (Path(folder) / "index.html").write_text(FOREIGN_PAGE.replace("SERVER", server_url))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    port = int(server_url.rsplit(":", 1)[1])
    statuses = {}
    try:
        with browser_with_fake_webcam(None, ["--host-resolver-rules=MAP rebound.example 127.0.0.1"]) as page:
            page.on("response", lambda r: r.url.startswith(server_url) and statuses.__setitem__(
                "/" + r.url.split("/", 3)[3].split("?")[0], r.status))
            page.goto(f"http://127.0.0.1:{site.server_address[1]}/index.html")
            page.wait_for_function("window.results.websocket !== undefined", timeout=timeout * 1000)
            page.wait_for_timeout(500)
            websocket = page.evaluate("window.results.websocket")
            rebound = page.goto(f"http://rebound.example:{port}/api/health")
            return {"statuses": statuses, "websocket": websocket, "rebound_status": rebound.status}
    finally:
        site.shutdown()
