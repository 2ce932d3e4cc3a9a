"""benchmarks.md (the tables) and benchmarks.png (the four charts) from the results that
benchmark.py measured."""
from pathlib import Path

import numpy as np

from expressions import model as nets
from expressions.faces import DETECT_EVERY
from expressions.outputs import save_figure, write_text


def write_markdown(results, path: Path):
    acc, ph, lat, vid, tr = (results[k] for k in ("test_accuracy", "photos", "latency_ms", "video_fps", "training"))
    lines = [f"Measured {results['date']} on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
             f"fer {results['fer_version']}, by `{results['command']}`.", "",
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
    lines += ["", f"| video (decode, detect, crop, classify, print) | frames | faces | ours FPS (faces searched every "
              f"{DETECT_EVERY} frames, the default) | ours FPS (every frame) | fer FPS | ours / fer | per-second "
              "lines with the same emotion, every frame vs default | largest change of a percentage, points |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['frames']} | {r['faces']} | {r['ours_fps']:.1f} | {r['ours_fps_every_frame']:.1f} | "
              f"{r['fer_fps']:.1f} | **{r['ratio']:.2f}x** | {r['same_emotion']:.1%} of {r['lines']} | "
              f"{r['max_points_change']} |" for name, r in vid.items()]
    lines += ["", "five_faces.mp4 is made by the benchmark from the shared videos (`benchmarking.videos.CROWD`): "
              "five faces tiled in a 640x480 frame."]
    lines += ["", "| our training throughput | images/s |", "|---|---|",
              f"| float32 | {tr['float32']:.0f} |", f"| mixed bfloat16 | {tr['mixed_bfloat16']:.0f} "
              f"({tr['bf16_over_float32']:.2f}x float32) |", ""]
    write_text(path, "\n".join(lines))


def plot(results, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    colour = lambda name: ("tab:cyan" if name.startswith("ours pre-trained") else  # noqa: E731
                           "tab:blue" if name.startswith("ours") else "tab:orange")

    acc = results["test_accuracy"]
    names = list(acc)
    axes[0].barh(names, [acc[n]["accuracy"] * 100 for n in names], color=[colour(n) for n in names])
    axes[0].set_xlabel("accuracy on the 7,178 test images, %")
    axes[0].set_xlim(50, 75)

    ph = results["photos"]
    axes[1].bar(["ours", "fer"], [ph["correct"]["ours"], ph["correct"]["fer"]], color=["tab:blue", "tab:orange"])
    axes[1].set_ylabel(f"photos right, of {ph['n']}")

    lat = results["latency_ms"]
    names = list(lat)
    y = np.arange(len(names))
    axes[2].barh(y - 0.2, [lat[n]["batch1"]["median"] for n in names], 0.4, color=[colour(n) for n in names],
                 label="batch of 1")
    axes[2].barh(y + 0.2, [lat[n]["batch64"]["median"] for n in names], 0.4, color=[colour(n) for n in names],
                 alpha=0.45, label="per face, batch of 64")
    axes[2].set_yticks(y, names)
    axes[2].set_xlabel("ms per face (median)")
    axes[2].legend(fontsize=8)

    vid = results["video_fps"]
    names = list(vid)
    x = np.arange(len(names))
    axes[3].bar(x - 0.2, [vid[n]["ours_fps"] for n in names], 0.4, color="tab:blue", label="ours")
    axes[3].bar(x + 0.2, [vid[n]["fer_fps"] for n in names], 0.4, color="tab:orange", label="fer")
    axes[3].set_xticks(x, [n.replace(".mp4", "") for n in names], rotation=15, fontsize=8)
    axes[3].set_ylabel("end-to-end frames per second")
    axes[3].legend(fontsize=8)
    fig.suptitle(f"ours vs fer {results['fer_version']}, measured in one run on {results['machine']['cpu']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
