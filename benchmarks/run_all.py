"""Run every benchmark one after the other (``make bench``); each prints its own figures and ratios."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ["benchmarks.filter_speed", "--repeats", "5", "--threads", "1", "2"],
    ["benchmarks.seed_batch"],
    ["benchmarks.variants", "--videos", "3", "--frames", "3000", "--epochs", "10"],
    ["benchmarks.ray_seeds"],
    ["benchmarks.ray_scoring"],
    ["benchmarks.load_scoring"],
]


def main() -> int:
    failed = 0
    for args in BENCHMARKS:
        print(f"\n$ python -m {' '.join(args)}", flush=True)
        failed += subprocess.run([sys.executable, "-m", *args]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
