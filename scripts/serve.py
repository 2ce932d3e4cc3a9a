"""A local web app and HTTP API: your webcam in the browser with live boxes and emotions,
photo and video upload, JSON for programs.

    python scripts/serve.py              # then open http://127.0.0.1:8000
    python scripts/serve.py --port 8080

The page (webcam, photo, video) and the API (GET /api/health, POST /api/predict, the
/api/stream WebSocket, POST /api/video) are described in docs/web.md and at /docs. The
model and the face detector are loaded once, at start. It listens on 127.0.0.1, this
machine only, unless --host says otherwise. Ctrl-C or SIGTERM stops it cleanly: video jobs
and requests in flight end, its temporary files are removed, exit code 0.

Safe to leave running: it answers only requests whose Host header names it and, from a
browser, only its own page (other sites' pages get 403, unless --allow-origin names them);
images are measured before they are decoded, videos known by their container; uploads, the
video queue, its disk space, connections, webcam streams and slow or idle clients are all
bounded (413, 415, 429, 503, or the connection closed).
"""
import argparse
import contextlib
import os
import signal
import socket
import sys
import time

from expressions import UserError, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option
from expressions.faces import add_detector_option, add_max_megapixels_option

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but 127.0.0.1/localhost lets other machines use the "
                        "server, and it warns so (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    nets.add_model_option(p, why="; the model of photos")
    add_detector_option(p)
    nets.add_tta_option(p, default="flip", why="; of photos, not flip+shift as in predict.py: a server answers many "
                        "photos at once, and flip costs 2 views per face instead of 10")
    add_crop_option(p)
    nets.add_runtime_option(p)
    p.add_argument("--stream-model", default="fast",
                   help="the model of the webcam view and of uploaded videos: fast, the stream's small network "
                        "(as predict_live_stream.py), own for the full ensemble with the mirror, or a .pkl "
                        "(default: %(default)s; photos use --model)")
    nets.add_tta_option(p, default=nets.ALTERNATE, stream=True, flag="--stream-tta",
                        why="; of the webcam view and uploaded videos, as predict_live_stream.py: one pass per face")
    p.add_argument("--max-upload-mb", type=float, default=10,
                   help="largest photo accepted by POST /api/predict, in MB; larger gets 413 (default: %(default)s)")
    p.add_argument("--max-video-mb", type=float, default=200,
                   help="largest video accepted by POST /api/video, in MB (default: %(default)s)")
    add_max_megapixels_option(p, default=50, why=", a 48-megapixel phone photo passes; larger gets 413. At "
                              "most --pipelines decoded images exist at once")
    p.add_argument("--pipelines", type=int, default=2,
                   help="face pipelines (detector + classifier) serving requests side by side; more requests "
                        "wait their turn (default: %(default)s, one per core of a laptop)")
    p.add_argument("--max-video-frames", type=int, default=18_000,
                   help="frames read of one uploaded video: a longer one is read up to there and its job says "
                        "so, which bounds the work one upload can ask for (default: %(default)s, 10 minutes at 30 "
                        "frames a second)")
    p.add_argument("--max-video-jobs", type=int, default=3,
                   help="videos waiting or being read at once (they are read one at a time); past it an upload "
                        "gets 429 and is not stored (default: %(default)s)")
    p.add_argument("--video-disk-mb", type=float, default=1000,
                   help="disk space for uploaded videos and their results, in MB; old finished jobs are removed "
                        "to make room, and past it an upload gets 429 (default: %(default)s)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example) whose pages may also use the API; repeat for more. "
                        "Without it only the server's own page may, so that a page you happen to visit cannot "
                        "(default: none)")
    p.add_argument("--max-connections", type=int, default=128,
                   help="open connections and requests at once; past it new requests get 503 (default: "
                        "%(default)s)")
    p.add_argument("--max-streams", type=int, default=16,
                   help="webcam streams (WebSockets of /api/stream) open at once, a part of --max-connections; "
                        "past it a new one is refused until one closes (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=60,
                   help="seconds a client has to send a request's headers and body, and a webcam stream to send "
                        "its next frame; slower connections are closed, so slow or idle clients cannot hold the "
                        "server's connections (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("pipelines", "max_video_jobs", "max_video_frames", "max_connections", "max_streams"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    for name in ("max_megapixels", "video_disk_mb", "request_timeout", "max_upload_mb", "max_video_mb"):
        if not getattr(args, name) > 0:  # also refuses nan
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a positive number")
    if args.max_streams >= args.max_connections:
        raise UserError(f"--max-streams {args.max_streams}: give fewer than --max-connections "
                        f"({args.max_connections}), so that streams leave connections for requests")
    return args


def check_port(host, port):
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            s.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port or --host") from None


def main(argv=None):
    args = parse_args(argv)
    server = None

    # Ctrl-C or SIGTERM at any moment: while loading, stop at once; once serving, a clean
    # shutdown (a second one: at once). Installed first, as a parent may have left SIGINT ignored.
    def stop(signum, frame):
        if server is None:
            raise KeyboardInterrupt
        server.force_exit = server.should_exit
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535")
    check_port(args.host, args.port)  # before the models load: a taken port is said at once
    # OpenCV's own ceiling on a decoded image, a second line behind the header check: the
    # server's limit. OpenCV reads it once, when imported.
    if "cv2" not in sys.modules:
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(int(args.max_megapixels * 1e6))
    try:
        import uvicorn
        from expressions.web import create_app
    except ImportError as err:
        raise UserError(f"the web app needs FastAPI and uvicorn ({err}): pip install -r requirements.txt") from None
    app = create_app(args.model, args.detector, args.tta, args.crop, args.runtime, args.max_upload_mb,
                     args.max_video_mb, args.pipelines, args.max_megapixels, args.max_video_jobs,
                     args.video_disk_mb, args.host, args.allow_origin, args.stream_model,
                     args.stream_tta, args.max_streams, args.request_timeout,
                     max_video_frames=args.max_video_frames)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can "
              "use the server and send it images", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # ours, at the top of main(): installed before the event loop, so no race
            yield

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # said once the port is really open
                print(f"Serving on http://{shown}:{args.port} (Ctrl-C stops it)", flush=True)

        async def on_tick(self, counter):
            if counter % 10 == 0:  # every second
                close_slow_clients(self.server_state.connections, args.request_timeout, seen)
            return await super().on_tick(counter)

    seen = {}
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   limit_concurrency=args.max_connections, timeout_graceful_shutdown=5,
                                   ws_max_size=int(args.max_upload_mb * 1024 * 1024)))

    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        pass
    if not server.started and not server.should_exit:
        raise UserError(f"cannot listen on {args.host}:{args.port} (in use by another program, or not an "
                        "address of this machine): choose another --port or --host")
    print("stopped", file=sys.stderr)
    return 0


def close_slow_clients(connections, timeout, seen):
    """Close HTTP connections that have taken over `timeout` seconds to send a request's
    headers, or its body, or that have read nothing of an answer for as long (uvicorn
    bounds none of these). `seen` maps a connection to what it was waiting for and since
    when. A request fully received is the server's time, not the client's; an idle
    keep-alive connection is closed by uvicorn itself after 5 s; WebSockets have their own
    pings (20 s), and the app closes one that sends no frame for `timeout` (web.create_app)."""
    now = time.monotonic()
    for conn in list(connections):
        cycle = getattr(conn, "cycle", "websocket")
        if cycle == "websocket":
            continue
        if cycle is None or cycle.response_complete:
            waiting = ("headers", id(cycle))
        elif cycle.more_body:
            waiting = ("body", id(cycle))
        elif getattr(getattr(conn, "flow", None), "write_paused", False):  # its buffer is full: not reading
            waiting = ("reading", id(cycle))
        else:
            seen.pop(conn, None)
            continue
        if seen.get(conn, (None, 0))[0] != waiting:
            seen[conn] = (waiting, now)
        elif now - seen[conn][1] > timeout:
            conn.transport.abort()  # close() would wait to send what a non-reading client never takes
            seen.pop(conn, None)
    for conn in [c for c in seen if c not in connections]:
        del seen[conn]


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
