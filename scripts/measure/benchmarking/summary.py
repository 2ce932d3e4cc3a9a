"""benchmarks.md (the tables) and benchmarks.png (the four charts) from the results that
benchmark.py measured."""
import textwrap
from pathlib import Path

import numpy as np

from expressions import machine_line
from expressions import model as nets
from expressions.faces import DETECT_EVERY
from expressions.outputs import save_figure, write_text


def write_markdown(results, path: Path):
    acc, ph, lat, vid, tr = (results[k] for k in ("test_accuracy", "photos", "latency_ms", "video_fps", "training"))
    lines = [f"Measured {results['date']} on {machine_line(results['machine'])}, fer {results['fer_version']}, "
             f"by `{results['command']}`.", "",
             "| test accuracy (7,178 images) | all | PublicTest | PrivateTest | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['accuracy']:.2%} | {r['PublicTest']:.2%} | {r['PrivateTest']:.2%} | {r['macro_f1']:.3f} |"
              for name, r in acc.items()]
    lines += ["", f"Ours ({nets.DEFAULT_TTA}) minus fer (default): "
              f"**{results['ratios']['accuracy_points_over_fer']:+.2f} points**.", "",
              f"| labelled photos ({ph['n']}), whole pipeline | correct | no face found |", "|---|---|---|",
              f"| ours | {ph['correct']['ours']}/{ph['n']} | {ph['no_face']['ours']} |",
              f"| fer | {ph['correct']['fer']}/{ph['n']} | {ph['no_face']['fer']} |", "",
              "| per-face classification, ms (median, 10th-90th percentile) | batch of 1 | per face, batch of 64 |",
              "|---|---|---|"]
    lines += [f"| {name} | {r['batch1']['median']:.2f} ({r['batch1']['p10']:.2f}-{r['batch1']['p90']:.2f}) | "
              f"{r['batch64']['median']:.3f} ({r['batch64']['p10']:.3f}-{r['batch64']['p90']:.3f}) |"
              for name, r in lat.items()]
    lines += [""] + video_lines(vid, results["ratios"])
    lines += ["", "five_faces.mp4 is made by the benchmark from the shared videos (`benchmarking.videos.CROWD`): "
              "five faces tiled in a 640x480 frame."]
    lines += ["", "| our training throughput | images/s |", "|---|---|",
              f"| float32 | {tr['float32']:.0f} |", f"| mixed bfloat16 | {tr['mixed_bfloat16']:.0f} "
              f"({tr['bf16_over_float32']:.2f}x float32) |", ""]
    write_text(path, "\n".join(lines))


def stream_line(name, stream):
    """What a stream ran, as its --json recorded it."""
    options = f"`{stream['options']}`" if stream.get("options") else "no options"
    return (f"{name}: predict_live_stream.py with {options}: {stream.get('model', '?')}, test-time augmentation "
            f"{stream.get('tta', '?')}, runtime {stream.get('runtime', '?')} ({stream.get('classifier', '?')}).")


def agreement_text(a):
    """agreement() of videos.py in words."""
    if not a["lines_matched"]:
        return "no line of both to compare"
    mean = "n/a" if a["mean_points"] is None else f"{a['mean_points']:.1f}"
    return (f"{a['same_emotion']:.1%} of {a['lines_matched']} lines (same emotion), percentages within "
            f"{mean} points on average, at most {a['max_points']}")


def video_lines(vid, ratios):
    """The end-to-end table: both streams and fer per video, and how far the default
    stream's per-second lines are from the full ensemble's."""
    first = next(iter(vid.values()))
    lines = [f"| video (decode, detect, crop, classify, print; faces searched every {DETECT_EVERY} frames) "
             "| frames | faces | default stream FPS | full ensemble FPS | fer FPS | default / fer "
             "| full ensemble / fer | per-second lines with the same emotion, default vs full ensemble "
             "| percentage difference where the same, mean / largest, points |", "|---" * 10 + "|"]
    for name, r in vid.items():
        a = r["agreement"]
        same = "n/a" if a["same_emotion"] is None else f"{a['same_emotion']:.1%} of {a['lines_matched']}"
        mean = "n/a" if a["mean_points"] is None else f"{a['mean_points']:.1f}"
        lines.append(f"| {name} | {r['frames']} | {r['faces']} | {r['default_fps']:.1f} | "
                     f"{r['full_ensemble_fps']:.1f} | {r['fer_fps']:.1f} | **{r['default_over_fer']:.2f}x** | "
                     f"{r['full_ensemble_over_fer']:.2f}x | {same} | {mean} / {a['max_points']} |")
    lines += ["", f"Per-second agreement, default stream vs full ensemble: "
              f"{agreement_text(ratios['agreement_default_vs_full_ensemble'])} (all videos' lines together).",
              f"Default stream / fer: at least **{ratios['fps_default_over_fer_min']:.2f}x** on every video.", "",
              "- " + stream_line("Default stream", first["default_stream"]),
              "- " + stream_line("Full ensemble", first["full_ensemble_stream"])]
    return lines


def plot(results, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 0.5, 1, 1.3]},
                             layout="constrained")  # tight_layout let the long labels overlap the next panel
    wrap = lambda name: textwrap.fill(name, 34)  # noqa: E731
    colour = lambda name: ("tab:orange" if name.startswith("fer") else  # noqa: E731
                           "tab:cyan" if name.startswith("ours pre-trained") else
                           "tab:green" if name.startswith("default stream") else "tab:blue")

    acc = results["test_accuracy"]
    names = list(acc)
    axes[0].barh([wrap(n) for n in names], [acc[n]["accuracy"] * 100 for n in names], color=[colour(n) for n in names])
    axes[0].set_xlabel("accuracy on the 7,178 test images, %")
    axes[0].set_xlim(50, 75)

    ph = results["photos"]
    axes[1].bar(["ours", "fer"], [ph["correct"]["ours"], ph["correct"]["fer"]], color=["tab:blue", "tab:orange"])
    axes[1].set_ylabel(f"photos right, of {ph['n']}")

    lat = results["latency_ms"]
    names = list(lat)
    y = np.arange(len(names))
    axes[2].barh(y - 0.2, [lat[n]["batch1"]["median"] for n in names], 0.4, color=[colour(n) for n in names])
    axes[2].barh(y + 0.2, [lat[n]["batch64"]["median"] for n in names], 0.4, color=[colour(n) for n in names],
                 alpha=0.45)
    axes[2].set_yticks(y, [wrap(n) for n in names], fontsize=8)
    axes[2].set_xlabel("ms per face (median)")
    axes[2].legend(handles=[Patch(color="grey"), Patch(color="grey", alpha=0.45)],  # bars are coloured by tool
                   labels=["batch of 1", "per face, batch of 64"], fontsize=8)

    vid = results["video_fps"]
    names = list(vid)
    x = np.arange(len(names))
    for i, (key, label, c) in enumerate((("default_fps", "ours, default stream", "tab:green"),
                                         ("full_ensemble_fps", "ours, full ensemble", "tab:blue"),
                                         ("fer_fps", "fer", "tab:orange"))):
        axes[3].bar(x + (i - 1) * 0.27, [vid[n][key] for n in names], 0.27, color=c, label=label)
    axes[3].set_xticks(x, [n.replace(".mp4", "") for n in names], rotation=15, fontsize=8)
    axes[3].set_ylabel("end-to-end frames per second")
    axes[3].set_ylim(0, max(max(r["default_fps"], r["full_ensemble_fps"], r["fer_fps"]) for r in vid.values()) * 1.3)
    axes[3].legend(fontsize=8)
    fig.suptitle(f"ours vs fer {results['fer_version']}, measured in one run on {machine_line(results['machine'])}",
                 fontsize=9)
    save_figure(fig, path, dpi=100)
