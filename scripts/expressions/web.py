"""The web app of scripts/serve.py (FastAPI): a page with the webcam, photo and video views,
and a JSON API over the same face pipeline as the scripts.

    GET  /                        the page (static HTML, CSS, JavaScript: nothing from other sites)
    GET  /api/health              model, detector, runtime, version
    POST /api/predict             multipart `image` -> every face's box, emotion, 7 probabilities
    WS   /api/stream              JPEG frames in, faces with stable ids and per-second averages out
    POST /api/video               multipart `video` -> a job id; the server reads it in the background
    GET  /api/video/{job}         progress, then the per-second timeline
    GET  /api/video/{job}/timeline.csv, /annotated.mp4   the downloads

It trusts no input. Bodies are cut off at their limit; images are measured from their
header before they are decoded, and at most `pipelines` decoded images exist at once;
decoding and classifying run in worker threads, never on the event loop; the video queue
and its disk space are bounded (429 past them); a request whose Host header does not name
this server, or whose Origin (what browsers send) is another site's, gets 403 (DNS
rebinding, and pages the user happens to visit); file names are never used as paths.
"""
import asyncio
import base64
import contextlib
import ipaddress
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import VERSION, UserError
from . import model as nets
from .api import EmotionRecognizer
from .faces import ImageTooLarge, decode_image
from .pipeline import draw_faces, timeline_csv
from .video import (UPLOAD_CONTAINERS, FramesTooLarge, VideoFile, open_video, restrict_upload_demuxers,
                    video_container, video_fps)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MB = 1024 * 1024
MAX_MEGAPIXELS = 50.0  # the server's image limit: a 48 MP phone photo passes; the scripts allow 200
# ?annotate=true sends the picture back scaled to at most this, so the answer is bounded
# (a 50 MP photo of noise is 30 MB of JPEG) and JPEG can hold it (65,500 pixels a side at most).
MAX_ANNOTATED_MEGAPIXELS, MAX_ANNOTATED_SIDE = 2.0, 4096
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


class Recognizers:
    """A fixed pool of EmotionRecognizers (detector and classifier each), the Python API's
    path from image to faces. Neither OpenCV's detector nor a TensorFlow Lite interpreter
    may serve two threads at once, so each call borrows one and gives it back: requests
    share no mutable state, and `size` of them run side by side. A stream (a WebSocket, a
    video job) keeps its own face search and ids and borrows a classifier per frame.
    `images` bounds the decoded images alive at once (a request holds it from decoding to
    its answer), so memory stays flat however many clients send at once."""

    def __init__(self, size, model, detector, tta, crop, runtime, stream_model="fast", stream_tta=nets.ALTERNATE):
        if size < 1:
            raise UserError(f"--pipelines {size}: give 1 or more")
        self.size, self.pool, self.stream_pool = size, queue.Queue(), queue.Queue()
        # Streams (WebSockets, video jobs) classify with the stream's model, as predict_live_stream.py does.
        same = nets.model_path(stream_model).resolve() == nets.model_path(model).resolve() and stream_tta == tta
        for _ in range(size):
            recognizer = EmotionRecognizer(model, detector, crop, tta, runtime)
            self.pool.put(recognizer)
            streamer = recognizer if same else EmotionRecognizer(stream_model, detector, crop, stream_tta, runtime)
            self.stream_pool.put(streamer)
        self.runtime, self.stream_runtime, self.first = recognizer.runtime, streamer.runtime, streamer
        self.images = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def borrow(self, pool=None):
        pool = pool or self.pool
        recognizer = pool.get()
        try:
            yield recognizer
        finally:
            pool.put(recognizer)

    def analyze(self, image):
        with self.borrow() as recognizer:
            return recognizer.analyze(image)

    def classify_stream(self, crops):
        with self.borrow(self.stream_pool) as recognizer:
            return recognizer.classify(crops)

    def stream_reader(self, clock=None):
        """A stream's own face search and ids (as predict_live_stream.py's), classifying with the pool."""
        return self.first.stream_reader(clock=clock, classify=self.classify_stream)

    def close(self, timeout=30.0):
        """Wait until every recognizer is back, so that no thread is inside TensorFlow Lite
        when the process exits (that aborted the process, exit 134)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Empty):
            for pool in (self.pool, self.stream_pool):
                for _ in range(self.size):
                    pool.get(timeout=max(0.0, deadline - time.monotonic()))


def shown_name(filename, default="the upload"):
    """A client's file name as it may appear in a message: printable, at most 80 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", filename or "")[:80]
    return name or default


def jpeg_data_url(image, quality=85):
    """The image as a JPEG data URL, scaled down to the bounds above."""
    import cv2
    scale = min(1.0, (MAX_ANNOTATED_MEGAPIXELS * 1e6 / (image.shape[0] * image.shape[1])) ** 0.5,
                MAX_ANNOTATED_SIDE / max(image.shape[:2]))
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise HTTPException(400, "the annotated picture could not be encoded: ask without annotate")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode()


class QueueFull(Exception):
    """The video queue or its disk space is full: 429."""


class NotAVideo(Exception):
    """An upload in no video container the server reads: 415."""


class VideoJobs:
    """Uploaded videos, read one at a time by one background thread, each up to its first
    `max_frames` frames (the job says so when it stops there): the work one upload can ask
    for is bounded, whatever its header claims.
    Everything a job has (the upload, its annotated video, its CSV) lives in one folder of
    a temporary folder, removed when newer jobs push it out (the last `keep` finished jobs
    stay, fewer if the disk space needs it) and when the server stops. At most `max_jobs`
    wait or run, and all jobs' files together stay under `max_disk_mb`; past either a new
    upload is refused (429) before its body is read (reserve(), called by UploadLimit)."""

    def __init__(self, readers, max_megapixels=MAX_MEGAPIXELS, max_jobs=3, max_disk_mb=1000.0, keep=3,
                 max_frames=18_000):
        self.readers, self.max_megapixels, self.max_frames = readers, max_megapixels, max_frames
        self.max_jobs, self.max_disk, self.keep = max_jobs, max_disk_mb * MB, keep
        self.root = None  # made with the first upload: a server that never gets one leaves nothing behind
        self.jobs, self.reserved, self.lock = {}, {}, threading.Lock()
        self.waiting, self.stopping, self.worker = queue.Queue(), threading.Event(), None

    def disk_used(self):
        if self.root is None:
            return 0
        used = 0
        for f in self.root.rglob("*"):
            with contextlib.suppress(OSError):  # a job's folder removed meanwhile by reserve()
                used += f.stat().st_size if f.is_file() else 0
        return used

    def reserve(self, upload_bytes):
        """Admit an upload of this size before its body is read: (a reservation, None), or
        (None, why not). The reservation counts as a job and as its bytes until start() turns
        it into one or release() drops it, so uploads sent at the same moment cannot all pass
        the limits. Makes room first by removing the oldest finished jobs."""
        with self.lock:
            busy = sum(job["state"] in ("queued", "running") for job in self.jobs.values()) + len(self.reserved)
            if busy >= self.max_jobs:
                return None, (f"{busy} videos are waiting or being read, the server's limit: send this one when "
                              "one of them is done")
            finished = sorted((j for j in self.jobs if self.jobs[j]["state"] in ("done", "error")),
                              key=lambda j: self.jobs[j]["created"])
            needed = sum(self.reserved.values()) + upload_bytes
            while finished and (len(finished) > self.keep or self.disk_used() + needed > self.max_disk):
                shutil.rmtree(self.jobs.pop(finished.pop(0))["folder"], ignore_errors=True)
            if self.disk_used() + needed > self.max_disk:
                return None, (f"the server's space for videos ({self.max_disk / MB:g} MB) is full: send this one "
                              "when the videos being read are done")
            token = uuid.uuid4().hex
            self.reserved[token] = upload_bytes
            return token, None

    def release(self, token):
        with self.lock:
            self.reserved.pop(token, None)

    def start(self, upload, filename, token):
        """Store an upload admitted by reserve() and queue it; returns its job id. The file
        is stored under the suffix of the container its first bytes show (NotAVideo if
        none): the client's file name is shown in messages, never used."""
        with self.lock:
            if token not in self.reserved:
                raise QueueFull("this upload was not admitted: send it again")
        suffix = video_container(upload.read(1024))
        upload.seek(0)
        if suffix is None:
            raise NotAVideo(f"{shown_name(filename)} is not a video file the server reads ({UPLOAD_CONTAINERS})")
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="expressions-serve-"))
        job_id = uuid.uuid4().hex[:12]
        folder = self.root / job_id
        folder.mkdir()
        source = folder / ("upload" + suffix)
        with open(source, "wb") as out:
            shutil.copyfileobj(upload, out)
        job = {"state": "queued", "frames": 0, "total_frames": 0, "progress": 0.0, "seconds": [], "fps": 0.0,
               "error": None, "note": None, "annotated": True, "folder": folder, "created": time.time()}
        with self.lock:
            self.reserved.pop(token, None)  # now a job, counted as one
            self.jobs[job_id] = job
            if self.worker is None:
                self.worker = threading.Thread(target=self.work, name="video-jobs", daemon=True)
                self.worker.start()
        self.waiting.put((job, source, shown_name(filename)))
        return job_id

    def work(self):
        while not self.stopping.is_set():
            try:
                job, source, name = self.waiting.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.run(job, source, name)
            except Exception as err:  # noqa: BLE001 (a job never takes the queue down)
                job.update(state="error", error=f"{name} could not be read: {err.__class__.__name__}")

    def run(self, job, source, name):
        import cv2
        try:
            cap = open_video(str(source), self.max_megapixels, ffmpeg_only=True)
        except FramesTooLarge as err:
            job.update(state="error", error=f"{name}: {err}")
            return
        if cap is None:
            job.update(state="error", error=f"{name} is not a video the server can decode")
            return
        # The header's count is an estimate in some containers: it sets the progress bar only.
        header_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        job.update(state="running", total_frames=min(header_frames, self.max_frames))
        fps, stream, seconds = video_fps(cap), self.readers.stream_reader(), []
        video = VideoFile(job["folder"] / "annotated.mp4", fps)
        started, frames = time.perf_counter(), 0
        try:
            while not self.stopping.is_set():
                ok, frame = cap.read()
                if not ok:
                    break
                if frames == self.max_frames:
                    job["note"] = (f"Only its first {frames:,} frames were read, the server's limit "
                                   "(--max-video-frames).")
                    break
                faces, ended = stream.read(frame, frames / fps)
                seconds += ended
                job["seconds"] += [s.to_dict() for s in ended]
                if job["annotated"]:
                    try:
                        video.write(draw_faces(frame, faces))
                    except UserError:  # mp4v writes no frame over 8,191 pixels a side: the timeline only
                        job["annotated"] = False
                    if frames % 30 == 0 and self.disk_used() > self.max_disk:  # the annotated video grows
                        job["annotated"] = False
                    if not job["annotated"]:
                        video.close(keep=False)
                frames += 1
                job.update(frames=frames, progress=min(1.0, frames / max(job["total_frames"], frames + 1)))
            if self.stopping.is_set():
                raise RuntimeError("the server stopped before the video was read to the end")
            ended = stream.finish()
            seconds += ended
            job["seconds"] += [s.to_dict() for s in ended]
            video.close()
        except Exception as err:  # a broken file mid-way: the job says so (no server path), the server goes on
            video.close(keep=False)
            why = str(err) if self.stopping.is_set() else f"{err.__class__.__name__} after {frames} frames"
            job.update(state="error", error=f"{name} could not be read to the end: {why}")
            return
        finally:
            cap.release()
        if frames == 0:
            job.update(state="error", error=f"no frame of {name} could be read")
            return
        (job["folder"] / "timeline.csv").write_text(timeline_csv(seconds))
        job.update(state="done", progress=1.0, fps=frames / max(time.perf_counter() - started, 1e-9))

    def get(self, job_id):
        with self.lock:
            return self.jobs.get(job_id)

    def close(self):
        self.stopping.set()
        if self.worker is not None:
            self.worker.join(timeout=30)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def create_app(model="own", detector="yunet", tta=nets.DEFAULT_TTA, crop="auto", runtime="auto",
               max_upload_mb=10.0, max_video_mb=200.0, pipelines=2, max_megapixels=MAX_MEGAPIXELS,
               max_video_jobs=3, max_video_disk_mb=1000.0, host="127.0.0.1", allow_origins=(), stream_model="fast",
               stream_tta=nets.ALTERNATE, max_streams=16, stream_idle_seconds=60.0, max_video_frames=18_000):
    """The FastAPI app; the model and the detector are loaded here, once. `host` is the
    address the server listens on (Host headers naming it are answered); `allow_origins`
    are web origins (scheme://host[:port]) of other sites whose pages may use the API.
    Photos are read with `model` and `tta`; streams (the WebSocket, video jobs) with
    `stream_model` and `stream_tta`, as predict_live_stream.py reads them. At most
    `max_streams` WebSockets are open at once, each closed after `stream_idle_seconds`
    without a frame: idle sockets cannot take the connections HTTP requests need."""
    origins = [allowed_origin(o) for o in allow_origins]
    restrict_upload_demuxers()  # this process's FFmpeg reads uploaded containers only
    readers = Recognizers(pipelines, model, detector, tta, crop, runtime, stream_model, stream_tta)
    jobs = VideoJobs(readers, max_megapixels, max_video_jobs, max_video_disk_mb, max_frames=max_video_frames)
    info = {"status": "ok", "model": nets.model_path(model).name, "detector": detector, "tta": tta,
            "runtime": readers.runtime, "stream_model": nets.model_path(stream_model).name,
            "stream_tta": stream_tta, "stream_runtime": readers.stream_runtime, "version": VERSION}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()
        readers.close()

    app = FastAPI(title="Facial expressions", version=VERSION, lifespan=lifespan,
                  description="Every face in a photo, a video or a webcam frame, and the emotion it shows "
                              "(FER2013's seven classes), from a CNN trained from scratch.")
    limits = {"/api/predict": (max_upload_mb * MB, None), "/api/video": (max_video_mb * MB, jobs)}
    app.add_middleware(UploadLimit, limits=limits)
    if origins:  # their pages may read the answers
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(SameOrigin, host=host, origins=origins)  # added last: runs first
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.jobs = jobs
    streams = {"open": 0}  # WebSockets open now: counted on the event loop, so no lock

    # Plain answers are async: they never wait behind photos for a worker thread.
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/health", summary="The model, detector and version this server runs")
    async def health():
        return info

    @app.post("/api/predict", summary="Every face in a photo and its emotion")
    def predict(image: UploadFile = File(..., description="a photo: JPEG, PNG, BMP, TIFF, WebP or AVIF"),
                annotate: bool = Query(False, description="also return the photo with boxes drawn, as a data URL")):
        """Faces are returned largest first. `box` is x, y, width, height in the photo's
        pixels; `probabilities` has all 7 classes; valence and arousal are in [-1, 1]. A photo
        without a face gives `"faces": []`. A photo over the server's megapixel limit gets 413."""
        with readers.images:
            picture = decoded(image.file.read(), shown_name(image.filename), max_megapixels)
            faces = readers.analyze(picture)
            out = {"faces": [face.to_dict() for face in faces], **{
                k: info[k] for k in ("model", "detector", "tta", "runtime")}}
            if annotate:
                out["annotated"] = jpeg_data_url(draw_faces(picture, faces))
        return out

    @app.websocket("/api/stream")
    async def stream(socket: WebSocket):
        """Send JPEG frames as binary messages, one at a time: each gets back the faces with
        ids that stay the same across frames, and the per-second averages of any second
        that ended, computed as predict_live_stream.py computes them (faces searched in
        every 2nd frame and followed in between). A frame that cannot be read gets
        {"error": ...} and the stream goes on. Past the server's limit of streams the socket
        is refused (1013, try again later); a stream silent for the idle limit is closed (1001)."""
        if streams["open"] >= max_streams:  # accepted, then closed: a close before accept is a bare 403
            await socket.accept()
            await socket.close(code=1013, reason=f"the server's {max_streams} streams are in use: try again later")
            return
        streams["open"] += 1
        try:
            await socket.accept()
            await serve_stream(socket)
        finally:
            streams["open"] -= 1

    async def serve_stream(socket):
        started = time.time()
        state = readers.stream_reader(clock=started)

        def read(data):  # in a worker thread: decoding a large frame must not stall the event loop
            with readers.images:
                frame = decoded(data, "that frame", max_megapixels)
                t0 = time.perf_counter()
                faces, ended = state.read(frame, time.time() - started)
                return frame.shape, faces, ended, (time.perf_counter() - t0) * 1000

        try:
            while True:
                try:
                    message = await asyncio.wait_for(socket.receive(), stream_idle_seconds)
                except asyncio.TimeoutError:
                    await socket.close(code=1001, reason=f"no frame for {stream_idle_seconds:g} s")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is None:
                    await socket.send_json({"error": "send each frame as a binary message of JPEG or PNG bytes"})
                    continue
                try:
                    shape, faces, ended, ms = await run_in_threadpool(read, message["bytes"])
                except HTTPException as err:
                    await socket.send_json({"error": err.detail})
                    continue
                except Exception as err:  # noqa: BLE001 (one frame the pipeline chokes on: said, the stream goes on)
                    await socket.send_json({"error": f"that frame could not be read ({err.__class__.__name__})"})
                    continue
                await socket.send_json({"faces": [face.to_dict() for face in faces], "width": shape[1],
                                        "height": shape[0], "seconds": [s.to_dict() for s in ended],
                                        "milliseconds": ms})
        except WebSocketDisconnect:
            pass

    @app.post("/api/video", summary="Upload a video to read; returns a job id")
    def video_upload(request: Request,
                     video: UploadFile = File(..., description=f"a video file: {UPLOAD_CONTAINERS}")):
        """Videos are read one at a time. When the server already holds its limit of videos
        waiting or being read, or of disk space for them, the upload gets 429 before it is
        read; an upload without a Content-Length gets 411."""
        try:
            return {"job": jobs.start(video.file, video.filename, request.scope.get("video_reservation"))}
        except QueueFull as err:
            raise HTTPException(429, str(err)) from None
        except NotAVideo as err:
            raise HTTPException(415, str(err)) from None

    def job_or_404(job_id):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no video job {shown_name(job_id)[:40]} (jobs are kept until newer ones "
                                     "push them out)")
        return job

    @app.get("/api/video/{job_id}", summary="A video job's progress, then its per-second timeline")
    async def video_status(job_id: str):
        job = job_or_404(job_id)
        return {k: v for k, v in job.items() if k not in ("folder", "created")}

    @app.get("/api/video/{job_id}/{name}", summary="A finished job's timeline.csv or annotated.mp4")
    def video_file(job_id: str, name: str):
        job = job_or_404(job_id)
        if name not in ("timeline.csv", "annotated.mp4"):
            raise HTTPException(404, "the downloads are timeline.csv and annotated.mp4")
        if job["state"] == "error":
            raise HTTPException(409, f"the video job failed, so it has no downloads: {job['error']}")
        if job["state"] != "done":
            raise HTTPException(409, f"the video is still being read ({job['progress']:.0%})")
        if name == "annotated.mp4" and not job["annotated"]:
            raise HTTPException(404, "the annotated video was not kept: it outgrew the server's space for videos, "
                                     "or its frames are over 8,191 pixels a side, more than the video codec writes")
        return FileResponse(job["folder"] / name, filename=name)

    @app.exception_handler(RequestValidationError)
    async def one_line(request, err):  # FastAPI's default is a list of dicts; ours is one line like the others
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request, err):  # a bug's answer: JSON and no traceback for the client (the log has it)
        return JSONResponse({"detail": f"the server could not answer this request ({err.__class__.__name__})"},
                            status_code=500)

    return app


def decoded(data, name, max_megapixels):
    """Image bytes -> BGR image; 413 for an image over the limit, 400 for anything else."""
    try:
        return decode_image(data, name, max_megapixels)
    except ImageTooLarge as err:
        raise HTTPException(413, str(err).replace("(--max-megapixels)", "(the server's --max-megapixels)")) from None
    except UserError as err:
        raise HTTPException(400, f"{name} is not an image, or a corrupt one" if "not an image" in str(err)
                            else str(err)) from None


def allowed_origin(origin):
    """A web origin given by the user, as browsers send it: scheme://host[:port], lower case."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise UserError(f"--allow-origin {origin}: give a web origin such as https://app.example or "
                        "http://localhost:3000")
    return f"{parts.scheme}://{parts.netloc}"


def host_name(host_header):
    """The name or address in a Host header, without its port: 'localhost', '::1', ...;
    '' if it is not of the form name[:port] or [IPv6][:port]."""
    found = re.fullmatch(r"\[([0-9a-f:.]+)\](?::\d{1,5})?|([^:\[\]@/\s]+)(?::\d{1,5})?", host_header.strip().lower())
    return (found.group(1) or found.group(2)) if found else ""


class SameOrigin:
    """ASGI middleware: a request is answered only if its Host header names this server
    (a loopback name, the address it listens on, or an allowed origin's host; any IP
    address when it listens on all of them) and, when a browser sent an Origin, that origin
    is the server's own page or an allowed one; a browser's request without an Origin must
    not come from another site's page (Sec-Fetch-Site), unless the user followed a link.
    Otherwise 403 (a WebSocket is closed before it opens, which browsers see as 403 too).
    Programs such as curl send neither header."""

    def __init__(self, app, host="127.0.0.1", origins=()):
        self.app, self.origins = app, set(origins)
        self.any_address = host in WILDCARD_HOSTS
        self.names = LOCAL_NAMES | {host.strip("[]").lower()} | {urlsplit(o).hostname for o in origins}

    def refusal(self, scope):
        headers = dict(scope.get("headers") or [])
        named = [k for k, _ in scope.get("headers") or [] if k in (b"host", b"origin")]
        if len(named) != len(set(named)):  # two of either: which one would a proxy believe?
            return "a request may carry one Host and one Origin header"
        host = headers.get(b"host", b"").decode("latin-1")
        name = host_name(host)
        if not name or (name not in self.names and not (self.any_address and is_ip_address(name))):
            return f"Host {host[:80]!r} is not this server's address: use http://127.0.0.1 or the --host it was given"
        origin = headers.get(b"origin")
        if origin is not None:
            origin = origin.decode("latin-1").lower()
            scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
            if origin != f"{scheme}://{host.lower()}" and origin not in self.origins:
                return (f"requests from pages of {origin[:80]} are refused: only this server's own page may use it "
                        "(serve.py --allow-origin names others)")
        # Browsers send no Origin with a plain GET (an <img>, a no-cors fetch), but say where
        # it comes from; a link followed to this server (a navigation) is the user's own act.
        elif (headers.get(b"sec-fetch-site") in (b"cross-site", b"same-site")
              and headers.get(b"sec-fetch-mode") != b"navigate"):
            return "requests from other sites' pages are refused: only this server's own page may use it"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        why = self.refusal(scope)
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
        return await JSONResponse({"detail": why}, status_code=403)(scope, receive, send)


def is_ip_address(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class UploadLimit:
    """ASGI middleware: a request to a limited path with a larger body gets 413 and a
    one-line JSON detail: at once from its Content-Length, or, for a body sent without one,
    as soon as the bytes read pass the limit (an HTTPException, which FastAPI passes on to
    the app's handler). So an upload is never read past its limit. A path may also have a
    video queue (VideoJobs): a POST there must say its length (411), and is admitted by
    the queue before its body is read (429 if not), its reservation held until it ends."""

    def __init__(self, app, limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        limit, queue_ = self.limits.get(scope.get("path"), (None, None)) if scope["type"] == "http" else (None, None)
        if limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            response = JSONResponse({"detail": too_large(limit)}, status_code=413)
            return await response(scope, receive, send)
        token = None
        if queue_ is not None and scope["method"] == "POST":
            if not length.isdigit():
                return await JSONResponse({"detail": "send the video with a Content-Length"},
                                          status_code=411)(scope, receive, send)
            token, why = queue_.reserve(int(length))
            if why:
                return await JSONResponse({"detail": why}, status_code=429)(scope, receive, send)
            scope["video_reservation"] = token
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise StarletteHTTPException(413, too_large(limit))
            return message

        try:
            await self.app(scope, counted_receive, send)
        finally:
            if token is not None:
                queue_.release(token)


def too_large(limit):
    return f"upload too large: the limit is {limit / MB:g} MB"

