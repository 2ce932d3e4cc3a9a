"""Hack the CNN: change a face the model reads as Happy by a few grey levels so that it reads Sad.

A targeted iterative gradient attack (projected gradient descent toward --target) on the
exact model input, 48x48 grey pixels 0..255, that must fool every prediction mode the
project offers at once: a single pass, the mean with the mirror image, and the 10 views
of predict.py. Its loss is the sum over the three modes of a margin loss: each mode's
target probability must reach --min-probability and lead every other class by
--min-lead. The change stays within an L-infinity bound of epsilon grey levels; epsilon is
tried as 1, 2, 3, ... and the smallest one whose saved, rounded 8-bit image meets both
conditions in all three modes wins.

    python scripts/hack_the_cnn.py                    # scikit-image's astronaut() photo (smiling)
    python scripts/hack_the_cnn.py --image me.jpg

Writes to results/hack_cnn/: input_image.png, hacked_image.png, hack.png (figure) and
hack.json (epsilon, L-inf, L2, PSNR, pixels changed, each mode's probabilities before and
after); then reloads both PNGs from disk and checks what the model says about them.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from expressions import EMOTIONS, RESULTS_DIR, UserError, run_cli
from expressions import model as nets
from expressions.crops import add_crop_option, crop_face
from expressions.faces import FaceDetector, add_detector_option, add_max_megapixels_option, read_image, to_gray
from expressions.outputs import check_folder, check_not_inputs, save_figure, write_image, write_json

HACK_DIR = RESULTS_DIR / "hack_cnn"
OUTPUT_NAMES = ("input_image.png", "hacked_image.png", "hack.json", "hack.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None,
                   help="photo with a face (default: scikit-image's astronaut() photo, NASA)")
    nets.add_model_option(p)
    p.add_argument("--source-class", default="Happy", choices=EMOTIONS,
                   help="what the model must say about the face first (default: %(default)s)")
    p.add_argument("--target", default="Sad", choices=EMOTIONS, help="class to reach (default: %(default)s)")
    p.add_argument("--max-eps", type=int, default=8, help="largest L-inf bound tried, grey levels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="gradient steps per epsilon (default: %(default)s)")
    p.add_argument("--min-probability", type=float, default=0.5,
                   help="the target's probability the hacked image must reach in every mode (default: %(default)s)")
    p.add_argument("--min-lead", type=float, default=0.2,
                   help="how far the target must lead every other class in every mode (default: %(default)s)")
    p.add_argument("--lfw-face", type=int, default=None, metavar="INDEX",
                   help="instead of a photo, hack face INDEX (0-99) of scikit-image's lfw_subset(), one of "
                        "--survey's faces, already a face crop (default: off)")
    p.add_argument("--survey", action="store_true",
                   help="instead of one photo, attack every face of scikit-image's lfw_subset() (100 faces of "
                        "Labeled Faces in the Wild, 25x25, upscaled to 48x48) that the model reads as "
                        "--source-class, side by side, and report how many are fooled at each epsilon "
                        "(survey.json, survey.png); --steps 300 keeps it to minutes (default: off)")
    add_detector_option(p)
    add_crop_option(p)
    add_max_megapixels_option(p)
    p.add_argument("--out", type=Path, default=HACK_DIR, help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.target == args.source_class:
        p.error(f"--target must differ from --source-class (both are {args.target})")
    if sum(x is not None and x is not False for x in (args.image, args.lfw_face, args.survey)) > 1:
        p.error("choose one of --image, --lfw-face and --survey")
    if args.lfw_face is not None and not 0 <= args.lfw_face < 100:
        p.error("--lfw-face must be from 0 to 99: lfw_subset()'s first 100 images are the faces")
    return args


def face_from(args):
    """The 48x48 crop of the largest face in --image, as predict.py PHOTO crops it."""
    import cv2
    if args.lfw_face is not None:  # already a 48x48 face crop
        return survey_faces()[args.lfw_face], f"scikit-image lfw_subset() face {args.lfw_face}"
    if args.image is None:
        from skimage import data as skdata
        image, name = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), "scikit-image astronaut()"
    else:
        image, name = read_image(args.image, args.max_megapixels), str(args.image)
    faces = FaceDetector(args.detector).detect(image, still=True)
    if not faces:
        raise UserError(f"no face found in {name}")
    return crop_face(to_gray(image), faces[0], args.crop), name


# The views of predict.py's 10-view mode: 0 is the image itself, 5 its mirror.
MODE_VIEWS = {"none": [0], "flip": [0, 5], "flip+shift": list(range(10))}


def fooled(p, target, min_probability, min_lead):
    """Whether probabilities [..., 7] put `target` at min_probability or more, min_lead
    ahead of every other class (numpy or TensorFlow, one verdict per row)."""
    p_target = p[..., target]
    p_other = (p * (1 - _one_hot(target))).max(-1) if isinstance(p, np.ndarray) else \
        _tf().reduce_max(p * (1 - _one_hot(target)), -1)
    return (p_target >= min_probability) & (p_target - p_other >= min_lead)


def _one_hot(k):
    return np.eye(len(EMOTIONS), dtype=np.float32)[k]


def _tf():
    import tensorflow as tf
    return tf


def attack(model, x0, target, eps, steps, min_probability=0.5, min_lead=0.2):
    """PGD toward `target` within +-eps grey levels that fools every prediction mode at
    once, for one face [48,48] or a batch [n,48,48] (uint8) attacked side by side. One call
    of the model on predict.py's 10 views gives all three modes. The loss is, per mode,
    the target's cross-entropy plus hinges on both conditions with a little slack (so that
    rounding to 8 bits keeps them). Sign steps with momentum, shrinking from eps/4 to
    eps/40. After every step the rounded image is checked in every mode; a face that passes
    is kept as it was then. Returns the rounded uint8 face(s) and whether each passed."""
    tf = _tf()
    single = x0.ndim == 2
    x0 = tf.constant(np.asarray(x0, np.float32).reshape(-1, *x0.shape[-2:], 1))
    delta = tf.Variable(tf.zeros_like(x0))
    momentum = tf.Variable(tf.zeros_like(x0))
    done = tf.Variable(tf.zeros([x0.shape[0]], tf.bool))
    slack = 0.03

    def mode_probabilities(x):
        views = nets.tta_views(x, "flip+shift", tf)
        p = tf.reshape(tf.cast(model(tf.concat(views, 0), training=False), tf.float32),
                       [len(views), -1, len(EMOTIONS)])
        return {mode: tf.reduce_mean(tf.gather(p, idx), 0) for mode, idx in MODE_VIEWS.items()}

    @tf.function
    def step(alpha):
        with tf.GradientTape() as tape:
            loss = 0.0
            for p in mode_probabilities(x0 + delta).values():
                p_target = p[:, target]
                p_other = tf.reduce_max(p * (1 - _one_hot(target)), -1)
                loss += tf.reduce_sum(-tf.math.log(p_target) + 5 * (tf.nn.relu(p_other - p_target + min_lead + slack)
                                                                   + tf.nn.relu(min_probability + slack - p_target)))
        grad = tape.gradient(loss, delta)
        momentum.assign(0.9 * momentum + grad / (tf.reduce_mean(tf.abs(grad), [1, 2, 3], keepdims=True) + 1e-12))
        moved = tf.clip_by_value(delta - alpha * tf.sign(momentum), -eps, eps)
        moved = tf.clip_by_value(x0 + moved, 0, 255) - x0
        delta.assign(tf.where(done[:, None, None, None], delta, moved))  # a face that passed stays put
        passed = tf.ones_like(done)
        for p in mode_probabilities(tf.round(x0 + delta)).values():
            passed &= fooled(p, target, min_probability, min_lead)
        done.assign(done | passed)
        return tf.reduce_all(done)

    for k in range(steps):
        if step(tf.constant(eps / 4 * 0.1 ** (k / max(steps - 1, 1)), tf.float32)):
            break
    hacked = tf.round(x0 + delta).numpy()[..., 0].astype(np.uint8)
    ok = done.numpy()
    return (hacked[0], bool(ok[0])) if single else (hacked, ok)


def survey_faces():
    """scikit-image's lfw_subset(): its first 100 images are faces (25x25, 0..1), upscaled
    to the model's 48x48 uint8 input."""
    import cv2
    from skimage import data as skdata
    faces = skdata.lfw_subset()[:100]
    return np.stack([cv2.resize(np.round(f * 255).astype(np.uint8), (48, 48), interpolation=cv2.INTER_CUBIC)
                     for f in faces])


def survey(args, model, predictors, source, target, out):
    """How often a change of 1, 2, 3, ... grey levels suffices, over many faces."""
    faces = survey_faces()
    before = predictors[nets.DEFAULT_TTA](faces[..., None]).numpy()
    chosen = np.flatnonzero(before.argmax(1) == source)
    if not len(chosen):
        raise UserError(f"the model reads none of the {len(faces)} lfw_subset() faces as {args.source_class}")
    print(f"{len(chosen)} of {len(faces)} lfw_subset() faces read as {args.source_class}; attacking them toward "
          f"{args.target} in every mode, {args.steps} steps per epsilon ...", flush=True)
    needed = np.zeros(len(chosen), int)  # the smallest epsilon that worked, 0 = none up to --max-eps
    hacked = faces[chosen].copy()
    after = {}  # per fooled face: the target's probability in each mode
    for eps in range(1, args.max_eps + 1):
        todo = np.flatnonzero(needed == 0)
        x1, ok = attack(model, faces[chosen[todo]], target, eps, args.steps, args.min_probability, args.min_lead)
        for mode, predict in predictors.items():  # the verdict of the project's own prediction path
            ok &= fooled(predict(x1[..., None]).numpy(), target, args.min_probability, args.min_lead)
        needed[todo[ok]], hacked[todo[ok]] = eps, x1[ok]
        for i, face in zip(todo[ok], x1[ok]):
            after[i] = {mode: float(predict(face[None, ..., None]).numpy()[0, target]) for mode, predict in predictors.items()}
        print(f"  epsilon {eps}: {int(ok.sum())} more fooled in every mode, {int((needed > 0).sum())} of "
              f"{len(chosen)} in all", flush=True)
        if needed.all():
            break
    report = {
        "faces": "scikit-image lfw_subset(), first 100 (faces), upscaled 25x25 -> 48x48",
        "source": args.source_class, "target": args.target, "steps": args.steps, "max_eps": args.max_eps,
        "min_probability": args.min_probability, "min_lead": args.min_lead,
        "faces_read_as_source": len(chosen), "faces_total": len(faces),
        "fooled_within": {str(e): int(((needed > 0) & (needed <= e)).sum()) for e in range(1, args.max_eps + 1)},
        "per_face": [{"index": int(i), f"{args.source_class.lower()}_probability": float(before[i, source]),
                      "epsilon_needed": int(e) or None, f"{args.target.lower()}_probability_after": after.get(k)}
                     for k, (i, e) in enumerate(zip(chosen, needed))],
    }
    write_json(out / "survey.json", report)
    survey_figure(faces[chosen], hacked, before[chosen, source], needed, args, out / "survey.png")
    print(f"wrote {out / 'survey.json'} and survey.png")


def survey_figure(faces, hacked, p_source, needed, args, path):
    """Each face as the attack left it, with the bound it needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    order = np.lexsort((-p_source, np.where(needed > 0, needed, 99)))
    cols = 10
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(hacked[i], cmap="gray", vmin=0, vmax=255)
        verdict = f"L-inf {needed[i]}" if needed[i] else f"> {args.max_eps}"
        ax.set_title(f"{args.source_class} {p_source[i]:.0%}\n{verdict}", fontsize=8,
                     color="C2" if 0 < needed[i] <= 2 else "C3" if not needed[i] else "black")
    fig.suptitle(f"Faces read as {args.source_class}, changed until {args.target} leads in every mode: the bound "
                 f"each needed ({args.steps} steps per bound)")
    fig.tight_layout()
    save_figure(fig, path)


def hack_figure(x0, x1, before, after, eps, path):
    """The two faces, their difference, and each mode's probabilities before and after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    diff = x1.astype(int) - x0.astype(int)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.9]})
    main_mode = nets.DEFAULT_TTA
    k0, k1 = int(np.argmax(before[main_mode])), int(np.argmax(after[main_mode]))
    axes[0].imshow(x0, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"input: {EMOTIONS[k0]} {before[main_mode][k0]:.0%}")
    axes[1].imshow(x1, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title(f"hacked: {EMOTIONS[k1]} {after[main_mode][k1]:.0%}")
    lim = max(1, np.abs(diff).max())
    im = axes[2].imshow(diff, cmap="seismic", vmin=-lim, vmax=lim)
    axes[2].set_title(f"difference (max {np.abs(diff).max()} grey levels)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes[:3]:
        ax.axis("off")
    xs = np.arange(len(EMOTIONS))
    width = 0.8 / (2 * len(before))
    for i, mode in enumerate(before):
        for j, (probs, shade) in enumerate(((before, 0.35), (after, 1.0))):
            axes[3].bar(xs + (2 * i + j - len(before) + 0.5) * width, probs[mode], width, alpha=shade,
                        color=f"C{i}", label=f"{'hacked' if j else 'input'}, --tta {mode}")
    axes[3].set_xticks(xs, EMOTIONS, rotation=30)
    axes[3].set_ylabel("probability")
    axes[3].legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle(f"A change of at most {eps} grey level{'s' if eps > 1 else ''} out of 255 turns {EMOTIONS[k0]} into {EMOTIONS[k1]} "
                 "in every prediction mode (pale: input, solid: hacked)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    import cv2
    out = check_folder(args.out)  # before the attack, not after it
    if args.image is not None:  # --image results/hack_cnn/input_image.png would be overwritten
        check_not_inputs([(out / name, "output") for name in OUTPUT_NAMES], [args.image])
    source, target = EMOTIONS.index(args.source_class), EMOTIONS.index(args.target)
    if args.survey:
        model = nets.load_model(args.model)
        survey(args, model, {mode: nets.make_predictor(model, mode) for mode in nets.TTA_MODES}, source, target, out)
        return 0
    x0, name = face_from(args)  # before the model is loaded: a photo without a face fails fast
    model = nets.load_model(args.model)
    predictors = {mode: nets.make_predictor(model, mode) for mode in nets.TTA_MODES}
    p0 = predictors[nets.DEFAULT_TTA](x0[None, ..., None]).numpy()[0]
    if int(np.argmax(p0)) != source:
        raise UserError(f"the model reads the face in {name} as {EMOTIONS[int(np.argmax(p0))]} "
                        f"({p0.max():.0%}), not {args.source_class}: choose another photo")
    print(f"{name}: {args.source_class} {p0[source]:.0%}; attacking toward {args.target} in every prediction "
          f"mode at once ({', '.join(nets.TTA_MODES)}): {args.target} at least {args.min_probability:.0%} "
          f"and {args.min_lead:.0%} ahead of every other class in each ...", flush=True)
    for eps in range(1, args.max_eps + 1):
        x1, ok = attack(model, x0, target, eps, args.steps, args.min_probability, args.min_lead)
        print(f"  epsilon {eps}: {'all modes fooled' if ok else 'not enough'}", flush=True)
        if ok:
            break
    else:
        raise UserError(f"no change within {args.max_eps} grey levels turns the face into {args.target} in every mode")

    write_image(out / "input_image.png", x0)
    write_image(out / "hacked_image.png", x1)
    # Trust only what is on disk: reload both 8-bit PNGs and predict again in every mode.
    r0 = cv2.imread(str(out / "input_image.png"), cv2.IMREAD_GRAYSCALE)
    r1 = cv2.imread(str(out / "hacked_image.png"), cv2.IMREAD_GRAYSCALE)
    before = {mode: predict(r0[None, ..., None]).numpy()[0] for mode, predict in predictors.items()}
    after = {mode: predict(r1[None, ..., None]).numpy()[0] for mode, predict in predictors.items()}
    for mode in nets.TTA_MODES:
        if int(np.argmax(before[mode])) != source or not fooled(after[mode], target, args.min_probability,
                                                                  args.min_lead):
            raise UserError(f"reloaded from disk, --tta {mode} reads {EMOTIONS[int(np.argmax(before[mode]))]} and "
                            f"{EMOTIONS[int(np.argmax(after[mode]))]} {after[mode].max():.0%}: the hack does not hold")
    diff = r1.astype(float) - r0.astype(float)
    mse = float((diff ** 2).mean())
    report = {
        "image": name, "epsilon": eps, "min_probability": args.min_probability, "min_lead": args.min_lead,
        "linf": int(np.abs(diff).max()), "l2": float(np.sqrt((diff ** 2).sum())),
        "psnr_db": float(10 * np.log10(255 ** 2 / mse)) if mse else None,
        "pixels_changed": int((diff != 0).sum()), "pixels": int(diff.size),
        "probabilities_before": {mode: dict(zip(EMOTIONS, map(float, p))) for mode, p in before.items()},
        "probabilities_after": {mode: dict(zip(EMOTIONS, map(float, p))) for mode, p in after.items()},
    }
    write_json(out / "hack.json", report)
    hack_figure(r0, r1, before, after, eps, out / "hack.png")
    for mode in nets.TTA_MODES:
        print(f"  --tta {mode:<10} input {args.source_class} {before[mode][source]:.0%} -> hacked {args.target} "
              f"{after[mode][target]:.0%} (next: {np.sort(after[mode])[-2]:.0%})")
    print(f"reloaded from disk; L-inf {report['linf']}, L2 {report['l2']:.1f}, PSNR {report['psnr_db']:.1f} dB, "
          f"{report['pixels_changed']} of {diff.size} pixels changed; wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
