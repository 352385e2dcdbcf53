"""How long the ``iiet`` command takes to answer: ``--help``, ``--version``, an unknown command, a command's ``--help``.

Each case runs as a fresh process (``python -m iiet_cli ...``, what the console script runs), the cases take turns
for ``--repeats`` rounds so that load on a shared machine hits all of them alike, and the table reports the median
and quartiles of the wall time. ``import iiet`` (which registers the models with transformers and so imports
torch) is timed alongside as the reference the fast answers avoid.

    python benchmarks/cli_startup.py --repeats 7 --output benchmarks/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 3.0  # issue 17: `iiet --help` answers in under 3 s on this machine class
CASES = {
    "iiet --help": ["-m", "iiet_cli", "--help"],
    "iiet --version": ["-m", "iiet_cli", "--version"],
    "iiet tran (unknown command)": ["-m", "iiet_cli", "tran"],
    "iiet plot --help": ["-m", "iiet_cli", "plot", "--help"],
    "python -c 'import iiet'": ["-c", "import iiet"],
}


def time_once(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "cli_startup.json"))
    args = parser.parse_args()

    for case in CASES.values():  # warm the file cache once; not timed
        time_once(case)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, case in CASES.items():
            times[name].append(time_once(case))

    rows = []
    for name, values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        rows.append({"case": name, "median_s": median, "q1_s": q1, "q3_s": q3, "runs_s": values})
    print(f"| case | median s | quartiles s |   (load average {os.getloadavg()[0]:.1f}, {args.repeats} runs each)")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['median_s']:.2f} | {row['q1_s']:.2f}-{row['q3_s']:.2f} |")
    helped = rows[0]["median_s"]
    print(f"\n`iiet --help`: {helped:.2f} s median, target < {TARGET_S:.0f} s: {'pass' if helped < TARGET_S else 'MISS'}")
    result = {"target_s": TARGET_S, "passed": helped < TARGET_S, "rows": rows,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
