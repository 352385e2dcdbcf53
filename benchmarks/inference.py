"""Inference benchmark (the paper's Table 3 and Figure 3b): the same function as ``iiet bench``.

    python benchmarks/inference.py --preset 55M --batch_sizes '[1, 4]' --output_dir bench_results/55m

Prints the Markdown table and writes results.md, decode_vs_iterations.png and results.json; docs/benchmarks.md
has the measured numbers and how to read them.
"""

from jsonargparse import CLI

from iiet.bench.commands import bench

if __name__ == "__main__":
    CLI(bench, as_positional=False)
