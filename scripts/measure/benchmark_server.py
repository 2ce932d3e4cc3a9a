"""The web app under load, beside the same work in one process, measured in one run.

    python scripts/measure/benchmark_server.py          # about a minute

1. Starts serve.py on a free port of 127.0.0.1 (its defaults: flip, TensorFlow Lite).
2. One client posts a 640x480 face photo to POST /api/predict, one request at a time
   (the latency of a lone request), taking turns with 4: the host's speed drifts.
3. --clients clients (50) post the same photo for --seconds (30), each sending its next
   request when its answer arrives: requests per second, latency percentiles, errors,
   and the server's memory (resident set) before and after.
4. The same load again beside a hostile mix for as long: decompression bombs (a 0.4 MB
   PNG of 12000x12000 pixels, a WebP of 7100x7100 disguised as a Photo CD image), requests from another site's page and under another host
   name, the largest photo allowed (49 megapixels) every half second, junk video uploads, bombs and text frames over the WebSocket, and slow clients
   that send their headers a byte at a time. The normal clients' errors and latency are
   compared with step 3; the hostile requests' answers are counted; the server's peak
   memory is reported; then one more normal request must get the same answer as before.
5. The same photo through the pipeline predict.py runs (detect, crop, classify, the same
   prediction mode), in this process, one photo after another: what HTTP costs on top.
Traffic goes to 127.0.0.1 only; every loop is bounded by time and count. Writes
results/benchmarks/server.json and server.md.
"""
import argparse
import asyncio
import collections
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from expressions import RESULTS_DIR, UserError, machine, machine_line, run_cli
from expressions import browser
from expressions.hostile import disguised_bomb, png_bomb, slow_client
from expressions import model as nets
from expressions.outputs import check_folder, write_json, write_text
from expressions.pipeline import EmotionReader

MAX_REQUESTS = 200_000  # a bound on any loop, whatever --seconds says
ROUNDS, TURN_SECONDS = 3, 4  # the lone client and the in-process pipeline take turns


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=30, help="length of the load run (default: %(default)s)")
    p.add_argument("--tta", choices=nets.TTA_MODES, default="flip",
                   help="prediction mode of the server and of the in-process run (default: %(default)s, serve.py's)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "benchmarks",
                   help="folder for server.json and server.md (default: %(default)s)")
    return p.parse_args(argv)


def face_photo():
    """A 640x480 JPEG with one face: scikit-image's astronaut (Eileen Collins, public
    domain) on a grey canvas."""
    import cv2
    from skimage import data
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[:480]
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = cv2.resize(face, (512, 480))
    return canvas, cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def rss_mb(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url, photo, clients, seconds):
    """`clients` loops posting `photo` until `seconds` pass: (latencies in s, status codes)."""
    import httpx
    latencies, statuses = [], []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one_client():
            while time.perf_counter() < deadline and len(statuses) < MAX_REQUESTS:
                start = time.perf_counter()
                try:
                    response = await client.post("/api/predict", files={"image": ("face.jpg", photo, "image/jpeg")})
                    ok = response.status_code == 200 and len(response.json()["faces"]) == 1
                    statuses.append(response.status_code if ok else -response.status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                latencies.append(time.perf_counter() - start)
        await asyncio.gather(*(one_client() for _ in range(clients)))
    return np.array(latencies), statuses


SLOW_CLIENTS = 20  # beside the normal clients, under serve.py's --max-connections (128)
HOSTILE_PAUSE = 0.05  # each hostile loop sends about 20 requests a second


async def hostile_mix(url, seconds):
    """Hostile clients for `seconds`, each in a loop: the server's answers counted by kind
    and status (0: no answer). Expected: bombs 413 (a PNG, and a WebP disguised as a Photo
    CD image), foreign pages and host names 403, the largest photo allowed 200 (no face),
    junk videos 415 (no video container) or 429, WebSocket bombs and text frames an error
    message."""
    import httpx
    from websockets.asyncio.client import connect
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    bomb, header_bomb, junk = png_bomb(12000, 12000), png_bomb(60000, 60000, pixels=False), os.urandom(1024 * 1024)
    largest = png_bomb(7000, 7000)  # 49 megapixels, just under the server's 50: decoded, 147 MB
    disguised = disguised_bomb()  # 50.4 megapixels in under 4 KB
    counts, deadline = collections.Counter(), time.perf_counter() + seconds

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def repeat(kind, send, pause=HOSTILE_PAUSE):
            while time.perf_counter() < deadline and sum(counts.values()) < MAX_REQUESTS:
                try:
                    counts[f"{kind} {(await send()).status_code}"] += 1
                except httpx.HTTPError:
                    counts[f"{kind} 0"] += 1
                await asyncio.sleep(pause)

        async def websocket_bombs():
            while time.perf_counter() < deadline:
                try:
                    async with connect(url.replace("http", "ws") + "/api/stream") as ws:
                        while time.perf_counter() < deadline:
                            for frame in (header_bomb, "text frame"):
                                await ws.send(frame)
                                answer = await ws.recv()
                                counts["websocket bomb or text: error answered" if '"error"' in answer
                                       else "websocket bomb or text: other"] += 1
                            await asyncio.sleep(HOSTILE_PAUSE)
                except Exception:  # noqa: BLE001 (counted: the server dropped the socket)
                    counts["websocket bomb or text: dropped"] += 1

        photo = ("face.jpg", face_photo()[1], "image/jpeg")
        until = asyncio.get_running_loop().time() + seconds
        slow = await asyncio.gather(
            repeat("bomb PNG", lambda: client.post("/api/predict", files={"image": ("bomb.png", bomb, "image/png")})),
            repeat("bomb WebP seen as Photo CD", lambda: client.post(
                "/api/predict", files={"image": ("bomb.webp", disguised, "image/webp")})),
            repeat("another site's page", lambda: client.post(
                "/api/predict", files={"image": photo}, headers={"origin": "http://evil.example"})),
            repeat("another host name", lambda: client.get("/api/health", headers={"host": "evil.example"})),
            repeat("largest photo allowed (7000x7000, black)", lambda: client.post(
                "/api/predict", files={"image": ("large.png", largest, "image/png")}), pause=0.5),
            repeat("junk video", lambda: client.post("/api/video", files={"video": ("junk.mp4", junk, "video/mp4")}),
                   pause=0.5),
            websocket_bombs(),
            *(slow_client(host, port, until) for _ in range(SLOW_CLIENTS)))
        counts["slow clients closed by the server"] = sum(slow[7:])
    return dict(sorted(counts.items()))


async def load_beside_hostile_mix(url, photo, clients, seconds):
    (latencies, statuses), hostile = await asyncio.gather(load(url, photo, clients, seconds),
                                                          hostile_mix(url, seconds))
    return latencies, statuses, hostile


def summary(latencies, statuses, seconds):
    ms = latencies * 1000
    return {"requests": len(statuses), "errors": sum(s != 200 for s in statuses),
            "requests_per_second": len(statuses) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


class InProcess:
    """predict.py's pipeline on the photo in this process, one photo after another."""

    def __init__(self, image, tta):
        self.image, self.reader, self.times = image, EmotionReader(nets.frame_predictor("own", tta)[0]), []
        self.reader(image, still=True)

    def run(self, seconds):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and len(self.times) < MAX_REQUESTS:
            start = time.perf_counter()
            faces, _, _ = self.reader(self.image, still=True)
            self.times.append(time.perf_counter() - start)
            if len(faces) != 1:
                raise UserError("the benchmark photo should show one face")

    def summary(self):
        ms = np.array(self.times) * 1000
        return {"photos": len(ms), "photos_per_second": float(len(ms) / (ms.sum() / 1000)),
                "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def write_markdown(r, path):
    lone, loaded, local, mixed = r["one_client"], r["load"], r["in_process"], r["load_beside_hostile"]
    lines = [f"Measured {r['date']} on {machine_line(r['machine'])}, by `{r['command']}`; "
             f"POST /api/predict with a 640x480 JPEG of one face, prediction mode {r['tta']}, "
             f"runtime {r['runtime']}.", "",
             "| | requests | per second | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|",
             f"| 1 client, one request at a time ({ROUNDS} x {TURN_SECONDS} s) | {lone['requests']} | "
             f"{lone['requests_per_second']:.1f} | {lone['p50_ms']:.1f} | {lone['p95_ms']:.1f} | {lone['p99_ms']:.1f} "
             f"| {lone['errors']} |",
             f"| **{r['clients']} clients at once ({r['seconds']:g} s)** | {loaded['requests']} | "
             f"**{loaded['requests_per_second']:.1f}** | {loaded['p50_ms']:.0f} | {loaded['p95_ms']:.0f} | "
             f"{loaded['p99_ms']:.0f} | **{loaded['errors']}** |",
             f"| **the same {r['clients']} clients beside the hostile mix ({r['seconds']:g} s)** | {mixed['requests']} "
             f"| **{mixed['requests_per_second']:.1f}** | {mixed['p50_ms']:.0f} | {mixed['p95_ms']:.0f} | "
             f"{mixed['p99_ms']:.0f} | **{mixed['errors']}** |",
             f"| predict.py's pipeline in one process, no HTTP ({ROUNDS} x {TURN_SECONDS} s, taking turns with "
             f"the row above) | {local['photos']} | "
             f"{local['photos_per_second']:.1f} | {local['p50_ms']:.1f} | {local['p95_ms']:.1f} | | |", "",
             f"Server memory (resident): {r['memory_mb']['start']:.0f} MB after start-up, "
             f"{r['memory_mb']['end']:.0f} MB after the load run (peak {r['memory_mb']['peak']:.0f} MB), "
             f"peak {r['memory_mb']['peak_hostile']:.0f} MB after the hostile mix.", "",
             f"Beside the hostile mix the normal clients' p95 was {mixed['p95_ms'] / loaded['p95_ms']:.2f}x that of the "
             f"plain load run, with {mixed['errors']} errors; after it the server answered a normal request "
             f"{'the same as before' if r['same_answer_after'] else 'DIFFERENTLY'}. What the hostile clients got "
             "(kind, status, count):", "",
             *[f"- {kind}: {n}" for kind, n in r["hostile"].items()], "",
             f"HTTP on top of the pipeline: {lone['p50_ms'] - local['p50_ms']:.1f} ms per lone request "
             f"(median); under load the server answers {loaded['requests_per_second'] / local['photos_per_second']:.0%} "
             "as many photos per second as the pipeline alone.", ""]
    write_text(path, "\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        raise UserError("--clients and --seconds must be positive")
    check_folder(args.out)
    image, photo = face_photo()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python scripts/measure/benchmark_server.py " + " ".join(map(str, sys.argv[1:] if argv is None else argv)), "machine": machine(),
               "clients": args.clients, "seconds": args.seconds, "tta": args.tta}
    with browser.running_server("--tta", args.tta) as (url, process):
        import httpx
        health = httpx.get(url + "/api/health").json()
        results["runtime"] = health["runtime"]
        # The lone client and the in-process pipeline take turns, so both see the same host.
        print(f"1/3 one client, and the same photo in this process, {ROUNDS} turns of {TURN_SECONDS} s each", flush=True)
        local = InProcess(image, args.tta)
        asyncio.run(load(url, photo, 1, 2))  # warm-up
        memory_start = rss_mb(process.pid)
        lone_latencies, lone_statuses = [], []
        for _ in range(ROUNDS):
            latencies, statuses = asyncio.run(load(url, photo, 1, TURN_SECONDS))
            lone_latencies += list(latencies)
            lone_statuses += statuses
            local.run(TURN_SECONDS)
        results["one_client"] = summary(np.array(lone_latencies), lone_statuses, ROUNDS * TURN_SECONDS)
        results["in_process"] = local.summary()
        print(f"2/3 {args.clients} clients, {args.seconds:g} s", flush=True)
        started = time.perf_counter()
        latencies, statuses = asyncio.run(load(url, photo, args.clients, args.seconds))
        results["load"] = summary(latencies, statuses, time.perf_counter() - started)
        results["memory_mb"] = {"start": memory_start, "end": rss_mb(process.pid), "peak": rss_mb(process.pid, "VmHWM")}
        print(f"3/3 {args.clients} clients beside the hostile mix, {args.seconds:g} s", flush=True)
        before = httpx.post(url + "/api/predict", files={"image": ("face.jpg", photo, "image/jpeg")}).json()["faces"]
        started = time.perf_counter()
        latencies, statuses, results["hostile"] = asyncio.run(
            load_beside_hostile_mix(url, photo, args.clients, args.seconds))
        results["load_beside_hostile"] = summary(latencies, statuses, time.perf_counter() - started)
        results["memory_mb"]["peak_hostile"] = rss_mb(process.pid, "VmHWM")
        after = httpx.post(url + "/api/predict", files={"image": ("face.jpg", photo, "image/jpeg")}, timeout=60)
        results["same_answer_after"] = after.status_code == 200 and after.json()["faces"] == before
    for name in ("one_client", "load", "load_beside_hostile", "in_process", "hostile", "same_answer_after"):
        print(f"  {name}: {results[name]}")
    write_json(args.out / "server.json", results)
    write_markdown(results, args.out / "server.md")
    print(f"wrote {args.out / 'server.json'} and server.md")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
