"""A local web app and HTTP API: your webcam in the browser with live boxes and emotions,
photo and video upload, JSON for programs.

    python scripts/serve.py              # then open http://127.0.0.1:8000
    python scripts/serve.py --port 8080

The page (webcam, photo, video) and the API (GET /api/health, POST /api/predict, the
/api/stream WebSocket, POST /api/video) are described in the README and at /docs. The
model and the face detector are loaded once, at start. It listens on 127.0.0.1, this
machine only, unless --host says otherwise. Ctrl-C stops it.
"""
import argparse
import contextlib
import signal
import socket
import sys

from expressions import UserError, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option
from expressions.faces import add_detector_option

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but 127.0.0.1/localhost lets other machines use the "
                        "server, and it warns so (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    nets.add_model_option(p)
    add_detector_option(p)
    nets.add_tta_option(p, default="flip", why="; not flip+shift as in predict.py: the webcam sends 10-15 "
                        "frames a second and flip keeps each under a few milliseconds")
    add_crop_option(p)
    nets.add_runtime_option(p)
    p.add_argument("--max-upload-mb", type=float, default=10,
                   help="largest photo accepted by POST /api/predict, in MB; larger gets 413 (default: %(default)s)")
    p.add_argument("--max-video-mb", type=float, default=200,
                   help="largest video accepted by POST /api/video, in MB (default: %(default)s)")
    p.add_argument("--pipelines", type=int, default=2,
                   help="face pipelines (detector + classifier) serving requests side by side; more requests "
                        "wait their turn (default: %(default)s, one per core of a laptop)")
    return p.parse_args(argv)


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
    try:
        import uvicorn
        from expressions.web import create_app
    except ImportError as err:
        raise UserError(f"the web app needs FastAPI and uvicorn ({err}): pip install -r requirements.txt") from None
    app = create_app(args.model, args.detector, args.tta, args.crop, args.runtime,
                     args.max_upload_mb, args.max_video_mb, args.pipelines)
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

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))

    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        pass
    if not server.started and not server.should_exit:
        raise UserError(f"cannot listen on {args.host}:{args.port} (in use by another program, or not an "
                        "address of this machine): choose another --port or --host")
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
