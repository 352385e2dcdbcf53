"""Local-file loaders and prompt helpers for the ``iiet_*`` lm-eval tasks (the paper's Table 1 suite, §3.3).

Each task YAML next to this file names a loader here as its ``custom_dataset``. lm-eval calls it with the task's
``metadata`` (where ``data_dir`` arrives: ``TaskManager(metadata={"data_dir": ...})`` or ``lm_eval --metadata``)
and it returns a ``DatasetDict`` with the split the task evaluates, in the field layout of the Hugging Face dataset
that lm-eval's own task reads. The prompts, targets and metrics therefore stay exactly lm-eval's; only the source of
the rows changes. WikiText and WinoGrande reuse lm-eval's own functions so the two routes cannot drift apart.

Expected layout under ``data_dir`` (the original public file formats)::

    wikitext-2-raw/test.raw                    WikiText-2 raw test file
    lambada/test.jsonl                         LAMBADA, OpenAI version ({"text": ...} per line)
    piqa/valid.jsonl, piqa/valid-labels.lst    PIQA validation + labels, aligned by line
    hellaswag/val.jsonl                        HellaSwag validation, re-encoded: {"query", "endings", "label", ...}
    sciq/test.json                             SciQ test, one JSON array
    arc-challenge/test.jsonl                   ARC-Challenge test, original ARC schema
    winogrande/dev.jsonl                       WinoGrande 1.1 dev (= lm-eval winogrande_xl validation)
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from lm_eval.api.task import ConfigurableTask

# lm-eval's own functions for the two tasks whose processing is Python code: reuse, don't copy.
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as wikitext_process_results  # noqa: F401
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)

from iiet.errors import IIETError

# Paper task name -> files it needs, relative to data_dir.
DATA_FILES: dict[str, tuple[str, ...]] = {
    "wikitext": ("wikitext-2-raw/test.raw",),
    "lambada": ("lambada/test.jsonl",),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "hellaswag": ("hellaswag/val.jsonl",),
    "sciq": ("sciq/test.json",),
    "arc_challenge": ("arc-challenge/test.jsonl",),
    "winogrande": ("winogrande/dev.jsonl",),
}


PAPER_METRIC = "paper_acc"


class Table1Task(ConfigurableTask):
    """An ``iiet_*`` task: lm-eval's ``ConfigurableTask`` with two changes for the Table 1 suite.

    * It also reports ``paper_acc``: the accuracy Table 1 shows for this task (``acc`` or ``acc_norm``, named by
      ``metadata.paper_metric``), so that the ``iiet_table1`` group can average one metric over the six accuracy
      tasks: the paper's Avg. column.
    * It loads its local data without lm-eval's "Custom kwargs can be passed to `--metadata`" warning (``data_dir``
      does arrive through the metadata, as docs/evaluation.md says).
    """

    def __init__(self, config: dict | None = None, **kwargs):
        # lm-eval hands a YAML-defined task class its whole YAML, the ``class`` key (which TaskConfig lacks) too.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        self.dataset = self.config.custom_dataset(**(self.config.metadata or {}), **(dataset_kwargs or {}))

    def process_results(self, doc, results):
        scores = super().process_results(doc, results)
        paper_metric = (self.config.metadata or {}).get("paper_metric")
        if paper_metric is not None:
            scores[PAPER_METRIC] = scores[paper_metric]
        return scores


def paper_acc(items):
    """The ``paper_acc`` metric's name for lm-eval; its per-document value is set by ``Table1Task.process_results``."""
    return items


def expected_layout() -> str:
    return ", ".join(path for paths in DATA_FILES.values() for path in paths)


def data_file(data_dir: str | Path | None, relative: str) -> Path:
    """The path of one data file, or an IIETError that names the file and the expected layout."""
    if data_dir is None:
        raise IIETError(
            "the iiet_* tasks read local files: pass data_dir (Python: evaluate(data_dir=...); "
            "plain lm_eval: --metadata '{\"data_dir\": \"/path/to/data\"}')"
        )
    path = Path(data_dir).expanduser() / relative
    if not path.is_file():
        raise IIETError(f"missing data file {path}; data_dir {data_dir} must hold: {expected_layout()}")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _one_split(split: str, rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def wikitext_documents(text: str) -> list[str]:
    """Split a raw WikiText file into articles, as the ``EleutherAI/wikitext_document_level`` dataset does.

    A new document starts at every top-level heading line `` = Title = `` (not `` = = Section = = ``); lines keep
    their original form and are joined with ``\\n``; whitespace-only chunks (the file's leading blank line) are
    dropped. WikiText-2 test gives 62 documents, validation 60.
    """
    documents, lines = [], []
    for line in text.split("\n"):
        collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
        if collapsed.startswith("= ") and collapsed.endswith(" ="):
            if "\n".join(lines).strip():
                documents.append("\n".join(lines))
            lines = []
        lines.append(line)
    if "\n".join(lines).strip():
        documents.append("\n".join(lines))
    return documents


def load_wikitext(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    text = data_file(data_dir, DATA_FILES["wikitext"][0]).read_text(encoding="utf-8")
    return _one_split("test", [{"page": page} for page in wikitext_documents(text)])


def load_lambada(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    rows = _read_jsonl(data_file(data_dir, DATA_FILES["lambada"][0]))
    return _one_split("test", [{"text": row["text"]} for row in rows])


def load_piqa(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    questions_file, labels_file = (data_file(data_dir, name) for name in DATA_FILES["piqa"])
    rows = _read_jsonl(questions_file)
    labels = [int(line) for line in labels_file.read_text().split()]
    if len(labels) != len(rows):
        raise IIETError(f"{labels_file} has {len(labels)} labels for {len(rows)} questions in {questions_file}")
    return _one_split(
        "validation",
        [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels)],
    )


def load_hellaswag(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    # The re-encoded file already holds lm-eval's preprocessed fields (query = "activity: context", endings).
    rows = _read_jsonl(data_file(data_dir, DATA_FILES["hellaswag"][0]))
    return _one_split(
        "validation", [{"query": r["query"], "endings": r["endings"], "label": int(r["label"])} for r in rows]
    )


def load_sciq(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    path = data_file(data_dir, DATA_FILES["sciq"][0])
    rows = json.loads(path.read_text(encoding="utf-8"))
    keys = ("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support")
    return _one_split("test", [{key: row[key] for key in keys} for row in rows])


def load_arc_challenge(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    # Original ARC schema -> the flat allenai/ai2_arc schema lm-eval's prompt is written against.
    rows = _read_jsonl(data_file(data_dir, DATA_FILES["arc_challenge"][0]))
    flat = [
        {
            "id": r["id"],
            "question": r["question"]["stem"],
            "choices": {
                "text": [c["text"] for c in r["question"]["choices"]],
                "label": [c["label"] for c in r["question"]["choices"]],
            },
            "answerKey": r["answerKey"],
        }
        for r in rows
    ]
    return _one_split("test", flat)


def load_winogrande(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    rows = _read_jsonl(data_file(data_dir, DATA_FILES["winogrande"][0]))
    keys = ("sentence", "option1", "option2", "answer")
    return _one_split("validation", [{key: str(row[key]) for key in keys} for row in rows])
