"""Hack the CNN: change a face the model reads as Happy by a few grey levels so that it reads Sad.

A targeted iterative gradient attack (projected gradient descent toward --target) on the
exact model input, 48x48 grey pixels 0..255. The change stays within an L-infinity bound
of epsilon grey levels; epsilon is tried as 1, 2, 3, ... and the smallest one that still
flips the saved, rounded 8-bit image wins. The attack goes through the prediction mode of
--tta (by default predict.py's: the gradient of the prediction averaged over the 10 views).

    python scripts/hack_the_cnn.py                    # scikit-image's astronaut() photo (smiling)
    python scripts/hack_the_cnn.py --image me.jpg

Writes to results/hack_cnn/: input_image.png, hacked_image.png, hack.png (figure) and
hack.json (epsilon, L-inf, L2, PSNR, pixels changed, probabilities before and after); then
reloads both PNGs from disk and checks what the model says about them.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, RESULTS_DIR, UserError, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option, crop_face
from expressions.faces import FaceDetector, add_detector_option, read_image, to_gray
from expressions.outputs import check_folder, save_figure, write_image, write_json

HACK_DIR = RESULTS_DIR / "hack_cnn"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None,
                   help="photo with a face (default: scikit-image's astronaut() photo, NASA)")
    nets.add_model_option(p)
    p.add_argument("--source-class", default="Happy", choices=EMOTIONS,
                   help="what the model must say about the face first (default: %(default)s)")
    p.add_argument("--target", default="Sad", choices=EMOTIONS, help="class to reach (default: %(default)s)")
    p.add_argument("--max-eps", type=int, default=8, help="largest L-inf bound tried, grey levels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="gradient steps per epsilon (default: %(default)s)")
    nets.add_tta_option(p, why="; the prediction mode the attack goes through")
    add_detector_option(p)
    add_crop_option(p)
    p.add_argument("--out", type=Path, default=HACK_DIR, help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.target == args.source_class:
        p.error(f"--target must differ from --source-class (both are {args.target})")
    return args


def face_from(args):
    """The 48x48 crop of the largest face in --image, as predict.py PHOTO crops it."""
    import cv2
    if args.image is None:
        from skimage import data as skdata
        image, name = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), "scikit-image astronaut()"
    else:
        image, name = read_image(args.image), str(args.image)
    faces = FaceDetector(args.detector).detect(image, still=True)
    if not faces:
        raise UserError(f"no face found in {name}")
    return crop_face(to_gray(image), faces[0], args.crop), name


def attack(model, x0, target, eps, steps, tta):
    """PGD toward `target` within +-eps grey levels; returns the rounded uint8 image and
    whether the rounded image is classified as target, checked at every step."""
    import tensorflow as tf
    x0 = tf.constant(x0[None, ..., None], tf.float32)
    predict = nets.make_predictor(model, tta)
    delta = tf.Variable(tf.zeros_like(x0))
    onehot = tf.one_hot([target], len(EMOTIONS))
    alpha = max(eps / 20, 0.05)
    best = None
    for _ in range(steps):
        with tf.GradientTape() as tape:
            p = predict(x0 + delta)
            loss = tf.keras.losses.categorical_crossentropy(onehot, p)
        grad = tape.gradient(loss, delta)
        delta.assign(tf.clip_by_value(delta - alpha * tf.sign(grad), -eps, eps))
        delta.assign(tf.clip_by_value(x0 + delta, 0, 255) - x0)
        rounded = tf.round(x0 + delta)
        if int(tf.argmax(predict(rounded)[0])) == target:
            best = rounded
            break
    final = best if best is not None else tf.round(x0 + delta)
    return final.numpy()[0, ..., 0].astype(np.uint8), best is not None


def hack_figure(x0, x1, p0, p1, eps, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    diff = x1.astype(int) - x0.astype(int)
    fig, axes = plt.subplots(1, 4, figsize=(15, 4), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    k0, k1 = int(np.argmax(p0)), int(np.argmax(p1))
    axes[0].imshow(x0, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"input: {EMOTIONS[k0]} {p0[k0]:.0%}")
    axes[1].imshow(x1, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title(f"hacked: {EMOTIONS[k1]} {p1[k1]:.0%}")
    lim = max(1, np.abs(diff).max())
    im = axes[2].imshow(diff, cmap="seismic", vmin=-lim, vmax=lim)
    axes[2].set_title(f"difference (max {np.abs(diff).max()} grey levels)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes[:3]:
        ax.axis("off")
    xs = np.arange(len(EMOTIONS))
    axes[3].bar(xs - 0.2, p0, 0.4, label="input")
    axes[3].bar(xs + 0.2, p1, 0.4, label="hacked")
    axes[3].set_xticks(xs, EMOTIONS, rotation=30)
    axes[3].set_ylabel("probability")
    axes[3].legend()
    fig.suptitle(f"A change of at most {eps} grey levels out of 255 turns {EMOTIONS[k0]} into {EMOTIONS[k1]}")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    import cv2
    out = check_folder(args.out)  # before the attack, not after it
    x0, name = face_from(args)  # before the model is loaded: a photo without a face fails fast
    model = nets.load_model(args.model)
    tta = args.tta
    predict = nets.make_predictor(model, tta)
    p0 = predict(x0[None, ..., None]).numpy()[0]
    source, target = EMOTIONS.index(args.source_class), EMOTIONS.index(args.target)
    if int(np.argmax(p0)) != source:
        raise UserError(f"the model reads the face in {name} as {EMOTIONS[int(np.argmax(p0))]} "
                           f"({p0.max():.0%}), not {args.source_class}: choose another photo")
    print(f"{name}: {args.source_class} {p0[source]:.0%}; attacking toward {args.target}"
          f" through the {tta} test-time augmentation of predict.py ...", flush=True)
    for eps in range(1, args.max_eps + 1):
        x1, flipped = attack(model, x0, target, eps, args.steps, tta)
        print(f"  epsilon {eps}: {'flipped' if flipped else 'not enough'}", flush=True)
        if flipped:
            break
    else:
        raise UserError(f"no change within {args.max_eps} grey levels turns the face into {args.target}")

    write_image(out / "input_image.png", x0)
    write_image(out / "hacked_image.png", x1)
    # Trust only what is on disk: reload both 8-bit PNGs and predict again.
    r0 = cv2.imread(str(out / "input_image.png"), cv2.IMREAD_GRAYSCALE)
    r1 = cv2.imread(str(out / "hacked_image.png"), cv2.IMREAD_GRAYSCALE)
    q0 = predict(r0[None, ..., None]).numpy()[0]
    q1 = predict(r1[None, ..., None]).numpy()[0]
    if int(np.argmax(q0)) != source or int(np.argmax(q1)) != target:
        raise UserError(f"the reloaded images read as {EMOTIONS[int(np.argmax(q0))]} and "
                           f"{EMOTIONS[int(np.argmax(q1))]}, not {args.source_class} and {args.target}")
    diff = r1.astype(float) - r0.astype(float)
    mse = float((diff ** 2).mean())
    report = {
        "image": name, "tta": tta, "epsilon": eps,
        "linf": int(np.abs(diff).max()), "l2": float(np.sqrt((diff ** 2).sum())),
        "psnr_db": float(10 * np.log10(255 ** 2 / mse)) if mse else None,
        "pixels_changed": int((diff != 0).sum()), "pixels": int(diff.size),
        "probabilities_before": dict(zip(EMOTIONS, map(float, q0))),
        "probabilities_after": dict(zip(EMOTIONS, map(float, q1))),
    }
    write_json(out / "hack.json", report)
    hack_figure(r0, r1, q0, q1, eps, out / "hack.png")
    print(f"reloaded from disk: input {args.source_class} {q0[source]:.0%}, hacked {args.target} {q1[target]:.0%}; "
          f"L-inf {report['linf']}, L2 {report['l2']:.1f}, PSNR {report['psnr_db']:.1f} dB, "
          f"{report['pixels_changed']} of {diff.size} pixels changed; wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
