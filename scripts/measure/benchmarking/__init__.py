"""The parts of benchmark.py (ours against `fer`), one concern per module:

    fer_env.py     the separate environment with `fer` in it, and fer's models loaded from it
    classifier.py  the network alone: test accuracy, per-face latency, training throughput
    photos.py      the labelled photos through each tool's whole pipeline
    videos.py      end-to-end frames per second on videos (and the five-face video)
    summary.py     benchmarks.md and benchmarks.png from the measured results
"""
