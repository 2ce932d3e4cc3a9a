"""benchmark.py's summary (benchmarks.md and .png) and its per-second agreement, from
synthetic results with the keys the benchmark writes: no measurement runs here."""
import re

from measure.benchmarking.summary import plot, write_markdown
from measure.benchmarking.videos import agreement, pooled_agreement

from expressions import machine, machine_line

FLAGS = "avx avx2 avx512_vnni avx512f f16c fma"


def figures(batch1):
    return {"batch1": {"median": batch1, "p10": batch1 * 0.9, "p90": batch1 * 1.2},
            "batch64": {"median": batch1 / 4, "p10": batch1 / 5, "p90": batch1 / 3}}


def video(default_fps, full_fps, fer_fps, same, lines):
    stream = {"model": "fast_model.pkl", "tta": "none", "runtime": "tflite int8",
              "classifier": "tflite int8: the only TensorFlow Lite form"}
    agreed = {"lines": lines, "lines_matched": lines, "same_emotion_lines": same, "same_emotion": same / lines,
              "mean_points": 2.5, "max_points": 9}
    return {"frames": 450, "faces": 1, "default_fps": default_fps, "full_ensemble_fps": full_fps, "fer_fps": fer_fps,
            "default_over_fer": default_fps / fer_fps, "full_ensemble_over_fer": full_fps / fer_fps,
            "default_runs": [default_fps], "full_ensemble_runs": [full_fps], "fer_runs": [fer_fps],
            "default_stream": {"options": "", **stream},
            "full_ensemble_stream": {"options": "--model own --tta flip", **stream, "model": "my_own_model.pkl",
                                     "tta": "flip"},
            "agreement": agreed}


def results():
    acc = {"accuracy": 0.72, "PublicTest": 0.71, "PrivateTest": 0.73, "macro_f1": 0.70, "n": 7178}
    vid = {"fer_woman2.mp4": video(300.0, 180.0, 46.0, 15, 16), "five_faces.mp4": video(120.0, 60.0, 20.0, 48, 50)}
    return {"date": "2026-12-03 12:00 UTC", "command": "python scripts/measure/benchmark.py --media m",
            "fer_version": "25.10.3", "machine": {"cpu": "Test CPU", "cores": 2, "cpu_flags": FLAGS},
            "test_accuracy": {"ours, single pass": acc, "ours, flip+shift (predict.py)": acc,
                              "fer, default (quantized TFLite)": {**acc, "accuracy": 0.66}},
            "photos": {"n": 14, "correct": {"ours": 9, "fer": 8}, "no_face": {"ours": 0, "fer": 0}},
            "latency_ms": {"default stream: fast model, single pass (tflite int8)": figures(0.3),
                           "full ensemble, mirror (tflite int8)": figures(3.0), "ours (Keras), none": figures(7.0),
                           "fer, default (quantized TFLite)": figures(0.5)},
            "video_fps": vid,
            "training": {"float32": 340.0, "mixed_bfloat16": 410.0, "bf16_over_float32": 1.2},
            "ratios": {"accuracy_points_over_fer": 6.0,
                       "fps_default_over_fer": {n: r["default_over_fer"] for n, r in vid.items()},
                       "fps_default_over_fer_min": min(r["default_over_fer"] for r in vid.values()),
                       "fps_full_ensemble_over_fer": {n: r["full_ensemble_over_fer"] for n, r in vid.items()},
                       "agreement_default_vs_full_ensemble": pooled_agreement([r["agreement"] for r in vid.values()])}}


def test_markdown_and_plot_name_the_cpu_flags_the_agreement_and_the_ratio(tmp_path):
    write_markdown(results(), tmp_path / "benchmarks.md")
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.splitlines()[0].startswith(f"Measured 2026-12-03 12:00 UTC on Test CPU (2 cores; {FLAGS})")
    # 63 of 66 lines pooled; the mean percentage difference is 2.5 on both videos.
    assert ("Per-second agreement, default stream vs full ensemble: 95.5% of 66 lines (same emotion), "
            "percentages within 2.5 points on average, at most 9") in text
    assert "| fer_woman2.mp4 | 450 | 1 | 300.0 | 180.0 | 46.0 | **6.52x** | 3.91x | 93.8% of 16 | 2.5 / 9 |" in text
    assert "at least **6.00x** on every video" in text
    assert "--model own --tta flip" in text and "fast_model.pkl" in text
    plot(results(), tmp_path / "benchmarks.png")
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000


def test_agreement_compares_the_lines_of_both_streams():
    full = {("00:00:00s", ""): ("Happy", 70), ("00:00:01s", ""): ("Sad", 40), ("00:00:02s", ""): ("Happy", 60)}
    default = {("00:00:00s", ""): ("Happy", 64), ("00:00:01s", ""): ("Neutral", 45)}  # a second missing
    a = agreement(default, full)
    assert a == {"lines": 3, "lines_matched": 2, "same_emotion_lines": 1, "same_emotion": 0.5, "mean_points": 6.0,
                 "max_points": 6}
    assert pooled_agreement([a, agreement(full, full)])["mean_points"] == 1.5  # 6 and 0, 0, 0 points
    assert agreement({}, full)["same_emotion"] is None


def test_machine_line_carries_the_cpu_flags():
    info = machine()
    flags = info["cpu_flags"].split()  # none on a CPU without AVX
    assert all(re.fullmatch(r"avx\w*|amx\w*|fma|f16c", f) for f in flags) and flags == sorted(set(flags))
    assert machine_line({"cpu": "Old CPU", "cores": 4}) == "Old CPU (4 cores; CPU flags not recorded)"
    assert machine_line({"cpu": "Arm", "cores": 4, "cpu_flags": ""}) == "Arm (4 cores; no AVX flags)"
