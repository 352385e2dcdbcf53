"""lm-eval task YAMLs for the paper's Table 1 suite, read from a local data directory (see ``utils.py``)."""

from pathlib import Path

TASK_DIR = Path(__file__).parent
