"""lm-eval task YAMLs for the paper's Table 1 suite, read from a local data directory (see ``utils.py``), and the
names of the tasks: the paper's, our local ``iiet_*`` tasks, and lm-eval's own hub tasks that read the same data."""

from pathlib import Path

TASK_DIR = Path(__file__).parent
# The paper's task names, in Table 1 order.
PAPER_TASKS: tuple[str, ...] = ("wikitext", "lambada", "piqa", "hellaswag", "sciq", "arc_challenge", "winogrande")
# lm-eval's own tasks that read the same data from the Hugging Face hub.
HUB_TASKS: dict[str, str] = {
    "wikitext": "wikitext",
    "lambada": "lambada_openai",
    "piqa": "piqa",
    "hellaswag": "hellaswag",
    "sciq": "sciq",
    "arc_challenge": "arc_challenge",
    "winogrande": "winogrande",
}
LOCAL_TASKS: dict[str, str] = {name: f"iiet_{name}" for name in PAPER_TASKS}
