"""The figures: class distribution, learning curves, confusion matrix, emotion timeline,
reliability diagram. Each takes plain data and a path, and writes the PNG atomically."""
from __future__ import annotations

import numpy as np

from . import EMOTIONS
from .outputs import save_figure


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def class_distribution(counts, path):
    """Images per class for the train, val and test columns of `counts` (name -> [7])."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, name in enumerate(["train", "val", "test"]):
        xs = np.arange(len(EMOTIONS)) + (i - 1) * width
        bars = ax.bar(xs, counts[name], width, label=f"{name} ({counts[name].sum():,})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(EMOTIONS)), EMOTIONS)
    ax.set_ylabel("images")
    ax.set_title("FER2013: images per class (test = PublicTest + PrivateTest)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def learning_curves(history, kept_epoch, path, batch_norm=None, validation_seen=False):
    """Loss and accuracy per epoch (a DataFrame with loss, accuracy, val_loss, val_accuracy),
    the kept epoch, and validation after the batch-norm pass when it was kept
    (validation_seen: the run trained on the validation rows too)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _curves(axes, history, kept_epoch, batch_norm, validation_seen)
    fig.tight_layout()
    save_figure(fig, path)


def runs_learning_curves(runs, path, title):
    """learning_curves for several runs, one row each: runs is a list of dicts with history,
    kept_epoch, batch_norm (or None) and title."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.8 * len(runs) + 0.6), squeeze=False)
    for row, run in zip(axes, runs):
        _curves(row, run["history"], run["kept_epoch"], run.get("batch_norm"), prefix=run["title"])
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _curves(axes, history, kept_epoch, batch_norm=None, validation_seen=False, prefix=""):
    """One run's loss (axes[0]) and accuracy (axes[1]) per epoch, the kept epoch marked."""
    epochs = np.arange(1, len(history) + 1)
    for ax, key in zip(axes, ["loss", "accuracy"]):
        ax.plot(epochs, history[key], label=f"train {key} (augmented)")
        seen = " (rows trained on)" if validation_seen else ""
        ax.plot(epochs, history[f"val_{key}"], label=f"validation {key}{seen}")
        if key == "accuracy" and batch_norm and batch_norm["kept"]:
            ax.plot([kept_epoch], [batch_norm["val_accuracy_recomputed"]], "o", color="green",
                    label=f"after the batch-norm pass: validation {batch_norm['val_accuracy_recomputed']:.1%}")
        ax.axvline(kept_epoch, color="grey", ls="--", label=f"kept: epoch {kept_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(f"{prefix}: {key}" if prefix else key)
        ax.grid(alpha=0.3)
        ax.legend()


def confusion_matrix(cm, path, title):
    plt = _pyplot()
    cm = np.asarray(cm)
    norm = cm / cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cm)), EMOTIONS, rotation=45)
    ax.set_yticks(range(len(cm)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)


def timeline(rows, path, seconds):
    """Per-second probabilities, valence and arousal of the faces seen longest (up to 4).
    rows: (second, face id, probabilities [7], valence, arousal). With no face at all the
    figure says so, rather than not being written."""
    plt = _pyplot()
    seen = {}
    for row in rows:
        seen[row[1]] = seen.get(row[1], 0) + 1
    ids = sorted(seen, key=lambda i: -seen[i])[:4]
    if not ids:
        fig, ax = plt.subplots(figsize=(11, 2))
        ax.text(0.5, 0.5, f"no face found in {seconds} s of video", ha="center", va="center", fontsize=14)
        ax.axis("off")
        save_figure(fig, path, dpi=100)
        return
    fig, axes = plt.subplots(len(ids), 1, figsize=(11, 3.2 * len(ids)), squeeze=False, sharex=True)
    for ax, face_id in zip(axes[:, 0], ids):
        face_rows = [r for r in rows if r[1] == face_id]
        t = np.array([r[0] for r in face_rows])
        p = np.array([r[2] for r in face_rows])
        ax.stackplot(t, p.T, labels=EMOTIONS, step="post", alpha=0.85)
        ax2 = ax.twinx()
        ax2.plot(t, [r[3] for r in face_rows], "k-", lw=1.5, label="valence")
        ax2.plot(t, [r[4] for r in face_rows], "k:", lw=1.5, label="arousal")
        ax2.set_ylim(-1, 1)
        ax2.set_ylabel("valence / arousal")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"face {face_id}")
        ax.set_xlabel("second")
        ax.legend(loc="upper left", fontsize=7, ncol=7)
        ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def reliability_diagram(panels, path, title):
    """One panel per prediction mode: accuracy against confidence in equal-width bins,
    before and after calibration. panels: {mode: {"before": rows, "after": rows,
    "ece_before": e, "ece_after": e}}, rows as calibration.reliability gives them; "after"
    may be left out, and "label_before"/"label_after" rename the lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, (mode, panel) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
        for key, colour, label in (("before", "tab:orange", "before"), ("after", "tab:blue", "after")):
            if key not in panel:
                continue
            rows = [r for r in panel[key] if r[2] > 0]
            ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", color=colour, ms=4,
                    label=f"{panel.get('label_' + key, label)}: ECE {panel['ece_' + key]:.1%}")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (the top probability)")
        ax.set_title(f"--tta {mode}")
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("accuracy in the bin")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
