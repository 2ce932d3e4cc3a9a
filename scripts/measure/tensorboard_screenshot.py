"""Screenshot of a real TensorBoard serving the training logs (results/model/tensorboard.png):
by default those of the committed model's members (the runs its metrics.json lists; the
other runs in results/model/runs/ are left out), drawn as one run each.

Starts TensorBoard on 127.0.0.1, opens it in headless Chromium (Debian: apt-get install
chromium), saves the page as a PNG and stops TensorBoard. A developer tool, not used in CI.

    python scripts/measure/tensorboard_screenshot.py
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from expressions import MODEL_DIR, ROOT, UserError, reports, run_cli
from expressions.browser import find_chromium, free_port
from expressions.outputs import atomic_path, check_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", type=Path, default=None,
                   help="TensorBoard log folder (default: the committed model's members' logs, "
                        "results/model/runs/MEMBER_tensorboard)")
    p.add_argument("--out", type=Path, default=MODEL_DIR / "tensorboard.png", help="(default: %(default)s)")
    p.add_argument("--chromium", default=find_chromium(),
                   help="browser binary (default: %(default)s)")
    return p.parse_args(argv)


def member_logdirs(model_dir=MODEL_DIR):
    """{run name: its TensorBoard folder} for each member of the committed model, as its
    metrics.json lists them (one network trained into results/model/: results/model/tensorboard)."""
    try:
        record = json.loads((model_dir / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {model_dir / 'metrics.json'}: {e}")
    models = ([ROOT / m["model"] for m in record.get("members", [])]
              or [model_dir / record.get("model", "my_own_model.pkl")])
    logdirs = {m.stem: reports.artifact(m.parent, m.stem, "tensorboard") for m in models}
    missing = [str(d) for d in logdirs.values() if not d.is_dir()]
    if missing:
        raise UserError(f"no TensorBoard logs at {', '.join(missing)}: train the model first")
    return logdirs


def main(argv=None):
    args = parse_args(argv)
    if args.logdir is None:
        logdir_flag = ["--logdir_spec", ",".join(f"{name}:{d}" for name, d in member_logdirs().items())]
    elif args.logdir.is_dir():
        logdir_flag = ["--logdir", str(args.logdir)]
    else:
        raise UserError(f"no TensorBoard logs at {args.logdir}: train a model first")
    if not args.chromium:
        raise UserError("no chromium found: apt-get install chromium")
    check_file(args.out, "screenshot")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    board = subprocess.Popen([sys.executable, "-m", "tensorboard.main", *logdir_flag,
                              "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise UserError("TensorBoard did not start")
        with tempfile.TemporaryDirectory() as profile, atomic_path(args.out) as tmp:
            # WebGL off: TensorBoard then draws its charts with a canvas that headless Chromium renders.
            subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-3d-apis",
                            "--disable-webgl", "--disable-background-networking", "--disable-quic",
                            "--no-first-run", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,1150",
                            "--virtual-time-budget=20000", f"--screenshot={tmp.resolve()}",
                            url + "?darkMode=false#timeseries"],
                           check=True, capture_output=True, timeout=120)
    finally:
        board.terminate()
        board.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
