"""The web app of scripts/serve.py (FastAPI): a page with the webcam, photo and video views,
and a JSON API over the same face pipeline as the scripts.

    GET  /                        the page (static HTML, CSS, JavaScript: nothing from other sites)
    GET  /api/health              model, detector, runtime, version
    POST /api/predict             multipart `image` -> every face's box, emotion, 7 probabilities
    WS   /api/stream              JPEG frames in, faces with stable ids and per-second averages out
    POST /api/video               multipart `video` -> a job id; the server reads it in the background
    GET  /api/video/{job}         progress, then the per-second timeline
    GET  /api/video/{job}/timeline.csv, /annotated.mp4   the downloads
"""
import base64
import contextlib
import queue
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import VERSION
from . import model as nets
from .pipeline import EmotionReader, StreamReader, draw_faces, face_record, second_record, timeline_csv
from .video import VideoFile, open_video, video_fps

STATIC_DIR = Path(__file__).resolve().parent / "static"
MB = 1024 * 1024


class Readers:
    """A fixed pool of face pipelines (detector and classifier each). Neither OpenCV's
    detector nor a TensorFlow Lite interpreter may serve two threads at once, so each call
    borrows one pipeline and gives it back: requests share no mutable state."""

    def __init__(self, size, model, detector, tta, crop, runtime):
        self.pool = queue.Queue()
        for _ in range(size):
            predict, self.runtime = nets.frame_predictor(model, tta, runtime)
            self.pool.put(EmotionReader(predict, detector, crop))

    def __call__(self, image, still=False):
        reader = self.pool.get()
        try:
            return reader(image, still)
        finally:
            self.pool.put(reader)


def decode_image(data: bytes):
    """Upload bytes -> BGR image, or None if they are not an image OpenCV can decode."""
    import cv2
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def jpeg_data_url(image, quality=85):
    import cv2
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode()


class VideoJobs:
    """Uploaded videos read in background threads, one at a time. Everything a job has (the
    upload, its annotated video, its CSV) lives in one temporary folder, removed when the
    job is pushed out by newer ones (the last `keep` stay) and when the server stops."""

    def __init__(self, readers, keep=3):
        self.readers, self.keep = readers, keep
        self.root = Path(tempfile.mkdtemp(prefix="expressions-serve-"))
        self.jobs, self.lock, self.one_at_a_time = {}, threading.Lock(), threading.Lock()

    def start(self, upload, filename):
        job_id = uuid.uuid4().hex[:12]
        folder = self.root / job_id
        folder.mkdir()
        source = folder / ("upload" + (Path(filename or "").suffix.lower()[:8] or ".mp4"))
        with open(source, "wb") as out:
            shutil.copyfileobj(upload, out)
        job = {"state": "queued", "frames": 0, "total_frames": 0, "progress": 0.0, "seconds": [], "fps": 0.0,
               "error": None, "folder": folder, "created": time.time()}
        with self.lock:
            self.jobs[job_id] = job
            for old in sorted(self.jobs, key=lambda j: self.jobs[j]["created"])[:-self.keep]:
                if self.jobs[old]["state"] in ("done", "error"):
                    shutil.rmtree(self.jobs.pop(old)["folder"], ignore_errors=True)
        threading.Thread(target=self.run, args=(job, source, filename), daemon=True).start()
        return job_id

    def run(self, job, source, filename):
        import cv2
        with self.one_at_a_time:
            cap = open_video(str(source))
            if cap is None:
                job.update(state="error", error=f"{filename or 'the upload'} is not a video the server can decode")
                return
            job.update(state="running", total_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
            fps, stream = video_fps(cap), StreamReader(self.readers)
            video = VideoFile(job["folder"] / "annotated.mp4", fps)
            started, frames = time.perf_counter(), 0
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    faces, ids, proba, ended = stream.read(frame, frames / fps)
                    if ended:
                        job["seconds"].append(second_record(*ended))
                    video.write(draw_faces(frame, [f.box for f in faces], proba, ids))
                    frames += 1
                    job.update(frames=frames, progress=min(1.0, frames / max(job["total_frames"], 1)))
                ended = stream.finish()
                if ended:
                    job["seconds"].append(second_record(*ended))
                video.close()
            except Exception as err:  # a broken file mid-way: the job says so, the server goes on
                video.close(keep=False)
                job.update(state="error", error=f"the video could not be read to the end: {err}")
                return
            finally:
                cap.release()
            (job["folder"] / "timeline.csv").write_text(timeline_csv(job["seconds"]))
            job.update(state="done", progress=1.0, fps=frames / max(time.perf_counter() - started, 1e-9))

    def get(self, job_id):
        with self.lock:
            return self.jobs.get(job_id)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def create_app(model="own", detector="yunet", tta=nets.DEFAULT_TTA, crop="auto", runtime="auto",
               max_upload_mb=10.0, max_video_mb=200.0, pipelines=2):
    """The FastAPI app; the model and the detector are loaded here, once."""

    readers = Readers(pipelines, model, detector, tta, crop, runtime)
    jobs = VideoJobs(readers)
    info = {"status": "ok", "model": nets.model_path(model).name, "detector": detector, "tta": tta,
            "runtime": readers.runtime, "version": VERSION}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()

    app = FastAPI(title="Facial expressions", version=VERSION, lifespan=lifespan,
                  description="Every face in a photo, a video or a webcam frame, and the emotion it shows "
                              "(FER2013's seven classes), from a CNN trained from scratch.")
    limits = {"/api/predict": max_upload_mb * MB, "/api/video": max_video_mb * MB}
    app.add_middleware(UploadLimit, limits=limits)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.jobs = jobs

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/health", summary="The model, detector and version this server runs")
    def health():
        return info

    @app.post("/api/predict", summary="Every face in a photo and its emotion")
    def predict(image: UploadFile = File(..., description="a photo: JPEG, PNG, BMP, TIFF or WebP"),
                annotate: bool = Query(False, description="also return the photo with boxes drawn, as a data URL")):
        """Faces are returned largest first. `box` is x, y, width, height in the photo's
        pixels; `probabilities` has all 7 classes; valence and arousal are in [-1, 1]. A photo
        without a face gives `"faces": []`."""
        picture = decode_image(image.file.read())
        if picture is None:
            raise HTTPException(400, f"{image.filename or 'the upload'} is not an image, or a corrupt one")
        faces, _, proba = readers(picture, still=True)
        out = {"faces": [face_record(f.box, p, landmarks=f.landmarks) for f, p in zip(faces, proba)], **{
            k: info[k] for k in ("model", "detector", "tta", "runtime")}}
        if annotate:
            out["annotated"] = jpeg_data_url(draw_faces(picture.copy(), [f.box for f in faces], proba))
        return out

    @app.websocket("/api/stream")
    async def stream(socket: WebSocket):
        """Send JPEG frames as binary messages, one at a time: each gets back the faces with
        ids that stay the same across frames, and the per-second averages of any second
        that ended (as predict_live_stream.py prints them)."""
        await socket.accept()
        state, started = StreamReader(readers), time.time()
        try:
            while True:
                frame = decode_image(await socket.receive_bytes())
                if frame is None:
                    await socket.send_json({"error": "that frame is not a JPEG or PNG image"})
                    continue
                t0 = time.perf_counter()
                faces, ids, proba, ended = await run_in_threadpool(state.read, frame, time.time() - started)
                seconds = [second_record(*ended, clock=started)] if ended else []
                await socket.send_json({"faces": [face_record(f.box, p, i) for f, p, i in zip(faces, proba, ids)],
                                        "width": frame.shape[1], "height": frame.shape[0], "seconds": seconds,
                                        "milliseconds": (time.perf_counter() - t0) * 1000})
        except WebSocketDisconnect:
            pass

    @app.post("/api/video", summary="Upload a video to read; returns a job id")
    def video_upload(video: UploadFile = File(..., description="a video file OpenCV can decode (.mp4, .avi, ...)")):
        return {"job": jobs.start(video.file, video.filename)}

    def job_or_404(job_id):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no video job {job_id} (jobs are kept until newer ones push them out)")
        return job

    @app.get("/api/video/{job_id}", summary="A video job's progress, then its per-second timeline")
    def video_status(job_id: str):
        job = job_or_404(job_id)
        return {k: v for k, v in job.items() if k not in ("folder", "created")}

    @app.get("/api/video/{job_id}/{name}", summary="A finished job's timeline.csv or annotated.mp4")
    def video_file(job_id: str, name: str):
        job = job_or_404(job_id)
        if name not in ("timeline.csv", "annotated.mp4"):
            raise HTTPException(404, "the downloads are timeline.csv and annotated.mp4")
        if job["state"] != "done":
            raise HTTPException(409, f"the video is still being read ({job['progress']:.0%})")
        return FileResponse(job["folder"] / name, filename=name)


    @app.exception_handler(RequestValidationError)
    async def one_line(request, err):  # FastAPI's default is a list of dicts; ours is one line like the others
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    return app


class UploadLimit:
    """ASGI middleware: a request to a limited path with a larger body gets 413 and a
    one-line JSON detail: at once from its Content-Length, or, for a body sent without one,
    as soon as the bytes read pass the limit (an HTTPException, which FastAPI passes on to
    the app's handler). So an upload is never read past its limit."""

    def __init__(self, app, limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        limit = self.limits.get(scope.get("path")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            response = JSONResponse({"detail": too_large(limit)}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise StarletteHTTPException(413, too_large(limit))
            return message

        await self.app(scope, counted_receive, send)


def too_large(limit):
    return f"upload too large: the limit is {limit / MB:g} MB"
