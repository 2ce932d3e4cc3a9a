"""Screenshots of the web app (results/web/): the live page with a face video playing as
the webcam, and a photo's answer. Starts serve.py on a free local port, opens the page in
headless Chromium (Debian: apt-get install chromium) with a fake webcam fed from VIDEO,
waits until the face, its emotion and a few per-second rows are shown, saves the PNGs and
stops the server.

    python scripts/measure/web_screenshot.py --video VIDEO.mp4 --photo PHOTO.jpg
"""
import argparse
import sys
import tempfile
from pathlib import Path

from expressions import RESULTS_DIR, UserError, run_cli
from expressions import browser
from expressions.outputs import atomic_path, check_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Test media are not the toolkit's: no defaults (results/web/ shows the shared media's
    # fer_woman2.mp4 and photos/Ann_Veneman_0003.jpg).
    p.add_argument("--video", type=Path, required=True, help="face video played as the webcam")
    p.add_argument("--photo", type=Path, required=True, help="photo uploaded in the Photo tab")
    p.add_argument("--seconds", type=float, default=6, help="seconds of webcam before the screenshot (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "web",
                   help="folder for live.png and photo.png (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path in (args.video, args.photo):
        if not path.is_file():
            raise UserError(f"not found: {path}")
    if browser.find_chromium() is None:
        raise UserError("no Chromium found: apt-get install chromium")
    out = check_folder(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        camera = browser.write_y4m(args.video, Path(tmp) / "camera.y4m", seconds=args.seconds + 4)
        with browser.running_server() as (url, _), browser.browser_with_fake_webcam(camera) as page:
            shown = browser.watch_live_page(page, url, seconds=args.seconds)
            with atomic_path(out / "live.png") as tmp_png:
                page.screenshot(path=str(tmp_png), full_page=True)
            photo = browser.upload_photo(page, args.photo)
            with atomic_path(out / "photo.png") as tmp_png:
                page.screenshot(path=str(tmp_png), full_page=True)
    print(f"live page: {shown['title']}, {shown['top_emotion']}; {shown['stats']}")
    print(f"photo: {photo['message']}: {photo['rows']}")
    print(f"wrote {out / 'live.png'} and {out / 'photo.png'}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
