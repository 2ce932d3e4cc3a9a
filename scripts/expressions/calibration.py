"""Honest probabilities: one temperature T fitted on the validation split, folded into the
model's last layer (softmax(z / T) is the softmax of a Dense layer whose kernel and bias
are divided by T; in an ensemble, into each member's last layer, before their
probabilities are averaged), and the figures that show whether it helped: expected
calibration error and negative log-likelihood."""
from __future__ import annotations

import numpy as np

from .model import classification_report, ensemble_members, predict_in_batches, tta_views

ECE_BINS = 15


def view_log_probabilities(model, x, tta):
    """log-probabilities [views, members, n, 7] of each view a `tta` mode averages over,
    from each member of an ensemble (one member for a single network)."""
    return np.stack([np.stack([np.log(np.clip(predict_in_batches(member, v, "none"), 1e-12, 1))
                               for member in ensemble_members(model)]) for v in tta_views(x, tta)])


def with_temperature(view_log_p, t):
    """The mode's probabilities [n, 7] if every view's and member's logits were divided by t."""
    z = view_log_p / t
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(-1, keepdims=True)).mean((0, 1))


def with_prior_adjustment(view_log_p, log_prior, tau):
    """The mode's probabilities [n, 7] if every view's and member's logits had tau x the log
    class prior taken off (logit adjustment: rarer classes said more often), which is what
    fold_prior_adjustment makes the model compute."""
    z = view_log_p - tau * np.asarray(log_prior)
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(-1, keepdims=True)).mean((0, 1))


def nll(p, y):
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())


def ece(p, y, bins=ECE_BINS):
    """Expected calibration error: the mean |accuracy - confidence| over equal-width
    confidence bins, weighted by the share of images in each."""
    confidence, correct = p.max(1), p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confidence > lo) & (confidence <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(total)


def class_figures(p, y):
    """Accuracy, macro recall (over the classes present in y), Disgust recall and ECE of
    probabilities p [n, 7] against labels y: the figures issue 40's levers are judged by."""
    report = classification_report(y, p.argmax(1))
    present = [c for c in report["per_class"].values() if c["support"]]
    return {"accuracy": report["accuracy"], "macro_recall": float(np.mean([c["recall"] for c in present])),
            "disgust_recall": report["per_class"]["Disgust"]["recall"], "ece": ece(p, y)}


def reliability(p, y, bins=ECE_BINS):
    """Per bin: (mean confidence, accuracy, count), for the reliability diagram."""
    confidence, correct = p.max(1), p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confidence > lo) & (confidence <= hi)
        rows.append((float(confidence[m].mean()) if m.any() else (lo + hi) / 2,
                     float(correct[m].mean()) if m.any() else 0.0, int(m.sum())))
    return rows


def fit_temperature(view_log_p, y):
    """The T in [0.05, 20] that minimises the negative log-likelihood of the mode's averaged
    probabilities (golden-section search on log T; the NLL is unimodal in T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(with_temperature(view_log_p, np.exp(a)), y), nll(with_temperature(view_log_p, np.exp(b)), y)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(with_temperature(view_log_p, np.exp(a)), y)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(with_temperature(view_log_p, np.exp(b)), y)
    return float(np.exp((lo + hi) / 2))


def fold_prior_adjustment(model, log_prior, tau):
    """Take tau x log_prior off the last layer's logits, in place (each member's, in an
    ensemble; before any temperature is folded, so that the logits become
    (z - tau log prior) / T): logit adjustment, which trades a little accuracy for the
    rare classes' recall (iterations.md, section 12)."""
    for member in ensemble_members(model):
        layer = member.layers[-1]
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias - tau * np.asarray(log_prior, bias.dtype)])
    return model


def training_log_prior(data):
    """log of each class's share of the training rows (x_train and x_val: the same shares,
    the validation split being stratified)."""
    y = np.concatenate([data["y_train"], data["y_val"]]).astype(int)
    return np.log(np.bincount(y, minlength=7) / len(y))


def fit_to_model(view_log_p, target_p, log_prior):
    """The logit adjustment tau in [0, 1.5] and temperature T in [0.05, 20] whose
    probabilities, softmax((z - tau log prior) / T), come closest to another model's (the
    least cross-entropy from target_p): for a model that learnt that model's probabilities
    before it was adjusted, and trained on the validation rows, where labels would find it
    too sure. A coarse grid, then a finer one around its best point."""
    def cross_entropy(tau, t):
        p = with_temperature(view_log_p - tau * np.asarray(log_prior), t)
        return float(-(target_p * np.log(np.clip(p, 1e-12, 1))).sum(1).mean())

    def best(taus, ts):
        return min(((cross_entropy(a, t), a, t) for a in taus for t in ts))[1:]

    tau, t = best(np.linspace(0, 1.5, 31), np.exp(np.linspace(np.log(0.05), np.log(20.0), 61)))
    tau, t = best(np.clip(tau + np.linspace(-0.05, 0.05, 11), 0, 1.5), t * np.exp(np.linspace(-0.1, 0.1, 21)))
    return float(tau), float(t)


def fold_temperature(model, t):
    """Divide the last layer's kernel and bias by t, in place (each member's, in an
    ensemble): the model then outputs softmax(z / t), averaged over members."""
    for member in ensemble_members(model):
        layer = member.layers[-1]
        if getattr(layer, "activation", None) is None or layer.activation.__name__ != "softmax":
            raise ValueError(f"the last layer of {member.name} is not a softmax Dense layer")
        layer.set_weights([w / t for w in layer.get_weights()])
    return model
