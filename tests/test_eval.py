"""Evaluation package: the local Table 1 tasks through lm-eval, perplexity by hand, errors, the report, the CLI.

Every test uses a tiny random ``LlamaForCausalLM`` and a byte-level BPE trained here on a few KB of text; the suite
tests read a few hand-written rows per task, in each benchmark's original file format (``data_dir`` below).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from iiet.errors import IIETError
from iiet.eval import evaluate, markdown_table
from iiet.eval.harness import HUB_TASKS, PAPER_TASKS, lm_eval_task_names
from iiet.models.loading import override_config
from iiet.eval.report import COLUMNS, table_rows
from iiet.eval.tasks.utils import DATA_FILES, wikitext_detokenizer, wikitext_documents

from .conftest import logged_messages

MAX_POSITIONS = 128  # small, so that long documents are scored in several rolling windows
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. A question: what is the answer? "
    "Robert Boulter is an English film, television and theatre actor. He had a guest role in 2000. "
    "Water boils at 100 degrees. Plants make sugar from light, water and carbon dioxide. "
    "Sarah was a much better surgeon than Maria so she always got the harder cases. "
) * 20




@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TRAINING_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, model):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TINY_WIKI = """ 
 = Robert Tinyman = 
 
 Robert Tinyman is an English actor . He had a guest @-@ starring role in 2000 . 
 
 = = Career = = 
 
 In 2001 he appeared in a play , and in 2003 he was cast in a film of 1 @,@ 000 scenes . 
 
 = Second Article = 
 
 The second article is about rivers , bridges and towns . 
 
 = Third Article = 
 
 Plants make sugar from light , water and carbon dioxide . 
"""
BENCHMARK_ROWS = 4  # rows per multiple-choice file


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A few invented rows per task, in each benchmark's original public file format (``DATA_FILES``)."""
    root = tmp_path_factory.mktemp("benchmarks")
    rows = range(BENCHMARK_ROWS)

    def write(relative: str, text: str) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)

    def jsonl(records) -> str:
        return "".join(json.dumps(r) + "\n" for r in records)

    write("wikitext-2-raw/test.raw", TINY_WIKI)
    write("lambada/test.jsonl", jsonl({"text": f"She opened the door and saw the garden number {i}. It was her garden"}
                                      for i in rows))
    write("piqa/valid.jsonl", jsonl({"goal": f"Open jar {i}.", "sol1": "Twist the lid.", "sol2": "Eat the lid."}
                                    for i in rows))
    write("piqa/valid-labels.lst", "".join(f"{i % 2}\n" for i in rows))
    write("hellaswag/val.jsonl", jsonl({"query": f"Cooking: a man boils water {i}. he", "label": i % 4,
                                        "endings": ["adds pasta.", "sings.", "leaves.", "sleeps."]} for i in rows))
    write("sciq/test.json", json.dumps([{"question": f"What do plants make from light ({i})?", "distractor1": "salt",
                                         "distractor2": "iron", "distractor3": "sand", "correct_answer": "sugar",
                                         "support": "Plants make sugar from light."} for i in rows]))
    write("arc-challenge/test.jsonl", jsonl({"id": f"q{i}", "question": {"stem": f"Which boils at 100 degrees ({i})?",
                                             "choices": [{"text": t, "label": label} for t, label in
                                                         (("water", "A"), ("iron", "B"), ("salt", "C"))]},
                                             "answerKey": "A"} for i in rows))
    write("winogrande/dev.jsonl", jsonl({"qID": f"w{i}", "sentence": "Sarah was a better cook than Maria so _ won.",
                                         "option1": "Sarah", "option2": "Maria", "answer": str(1 + i % 2)}
                                        for i in rows))
    assert all((root / f).is_file() for files in DATA_FILES.values() for f in files)
    return root


# (a) every task runs on the local files ----------------------------------------------------------------------


def test_every_task_runs_on_local_files(model, tokenizer, data_dir, tmp_path):
    results = evaluate([model], tokenizer=tokenizer, data_dir=data_dir, limit=3, output_dir=tmp_path)
    (output,) = results.values()
    expected = {column.task: [] for column in COLUMNS}
    for column in COLUMNS:
        expected[column.task].append(column.metric)
    for task, metrics in expected.items():
        local = f"iiet_{task}"
        assert output["n-samples"][local]["effective"] == 3
        for metric in metrics:
            value = output["results"][local][f"{metric},none"]
            if "perplexity" in metric:
                assert value > 1.0 and math.isfinite(value)
            else:
                assert 0.0 <= value <= 1.0
    assert output["results"]["iiet_wikitext"]["bits_per_byte,none"] > 0
    # The whole files were read (limit applies after loading): three articles, BENCHMARK_ROWS rows.
    assert output["n-samples"]["iiet_wikitext"]["original"] == 3
    assert output["n-samples"]["iiet_hellaswag"]["original"] == BENCHMARK_ROWS

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["lm_eval_version"] and saved["tasks"][output["iiet"]["model"]]["iiet_piqa"]["version"] == 1.0
    assert (tmp_path / "table.md").read_text() == markdown_table(results)
    assert (tmp_path / "results.csv").read_text().startswith("Model,Wiki. ppl,LMB. ppl,LMB. acc")


def test_wikitext_documents_split_at_top_level_headings(data_dir):
    documents = wikitext_documents((data_dir / "wikitext-2-raw/test.raw").read_text())
    assert len(documents) == 3  # " = = Career = = " is a section, not an article
    assert documents[0].startswith(" = Robert Tinyman = \n") and "Career" in documents[0]
    assert all(" = = " not in doc.split("\n")[0] for doc in documents)
    assert "\n".join(documents) == TINY_WIKI.split("\n", 1)[1]  # only the leading blank line is dropped


# (b) perplexity equals a direct computation ------------------------------------------------------------------

SMALL_WIKI = """ 
 = Alpha Article = 
 
 The alpha article is short . It has a number , 1 @,@ 000 , and a hyphen @-@ word . 
 
 = = History = = 
 
 {body} 
 
 = Beta Article = 
 
 Beta is another short article about plants , water and light . 
 
"""


def test_perplexity_matches_direct_computation(model, tokenizer, tmp_path):
    """lm-eval's definitions, from the summed token log-likelihood LL of each detokenised article:

    word_perplexity = exp(-sum LL / sum words), words = len(re.split(r"\\s+", raw article)) (before detokenising);
    byte_perplexity = exp(-sum LL / sum bytes), bits_per_byte = -sum LL / sum bytes / ln 2 (UTF-8 bytes of the raw
    article). LL is scored in disjoint windows of L = the model's max length predicted tokens: the first window is
    conditioned on the BOS/EOS prefix token, each later one on the L tokens before its end (so a full window sees
    one earlier token, the last, shorter one sees the rest of the previous window too).
    """
    body = "Robert Boulter is an English film , television and theatre actor . " * 8
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw/test.raw").write_text(SMALL_WIKI.format(body=body))
    output = evaluate([model], tokenizer=tokenizer, tasks=["wikitext"], data_dir=tmp_path)["LlamaForCausalLM"]
    assert output["max_length"] == MAX_POSITIONS

    pages = wikitext_documents((tmp_path / "wikitext-2-raw/test.raw").read_text())
    assert len(pages) == 2 and pages[1].startswith(" = Beta Article = ")
    total_ll, total_words, total_bytes, longest = 0.0, 0, 0, 0
    for page in pages:
        tokens = tokenizer.encode(wikitext_detokenizer({"page": page}))
        assert tokens == tokenizer.encode(wikitext_detokenizer({"page": page}), add_special_tokens=False)
        sequence = torch.tensor([tokenizer.eos_token_id] + tokens)
        longest = max(longest, len(tokens))
        for start in range(0, len(tokens), MAX_POSITIONS):
            end = min(start + MAX_POSITIONS, len(tokens))  # predict tokens[start:end] = sequence[start+1:end+1]
            inputs = sequence[max(0, end - MAX_POSITIONS) : end]  # the (up to) max-length tokens before them
            targets = sequence[start + 1 : end + 1]
            with torch.no_grad():
                logits = model(inputs[None]).logits[0, -len(targets) :]
            total_ll += torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).sum().item()
        total_words += len(re.split(r"\s+", page))
        total_bytes += len(page.encode("utf-8"))
    assert longest > 2 * MAX_POSITIONS  # the rolling windows were exercised

    got = output["results"]["iiet_wikitext"]
    assert got["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-4)
    assert got["byte_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_bytes), rel=1e-4)
    assert got["bits_per_byte,none"] == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-4)


# (c) clear errors ---------------------------------------------------------------------------------------------


def test_unknown_task_lists_valid_ones(model, tokenizer):
    with pytest.raises(IIETError, match="unknown task.*'mmlu'.*valid tasks: wikitext, lambada"):
        evaluate([model], tokenizer=tokenizer, tasks=["piqa", "mmlu"], data_dir="/nonexistent")


def test_missing_data_file_is_named(model, tokenizer, tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(IIETError, match=r"missing data file .*piqa/valid-labels\.lst.*must hold: .*test\.raw"):
        evaluate([model], tokenizer=tokenizer, tasks=["piqa"], data_dir=tmp_path)
    with pytest.raises(IIETError, match="not a directory"):
        evaluate([model], tokenizer=tokenizer, tasks=["piqa"], data_dir=tmp_path / "absent")


def tiny_piqa_dir(root: Path) -> Path:
    (root / "piqa").mkdir(parents=True)
    (root / "piqa/valid.jsonl").write_text('{"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Eat it."}\n')
    (root / "piqa/valid-labels.lst").write_text("0\n")
    return root


def test_unloadable_checkpoint(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-model"}')
    data = tiny_piqa_dir(tmp_path / "data")
    with pytest.raises(IIETError, match="cannot load checkpoint .*broken"):
        evaluate([str(broken)], tasks=["piqa"], data_dir=data)
    with pytest.raises(IIETError, match="does not exist"):
        evaluate([str(tmp_path / "absent")], tasks=["piqa"], data_dir=data)


def test_model_object_needs_tokenizer(model, tmp_path):
    with pytest.raises(IIETError, match="pass tokenizer="):
        evaluate([model], tasks=["piqa"], data_dir=tiny_piqa_dir(tmp_path))


# Overrides and task routing -----------------------------------------------------------------------------------


def test_overrides_merge_dict_fields_and_reject_unknown_fields(model):
    config = model.config
    changed = override_config(config, {"rope_parameters": {"rope_theta": 500.0}, "rms_norm_eps": 1e-5})
    assert changed.rope_parameters == {**config.rope_parameters, "rope_theta": 500.0}
    assert changed.rms_norm_eps == 1e-5 and config.rms_norm_eps == 1e-6
    with pytest.raises(IIETError, match=r"no field\(s\) \['scheme'\]"):
        override_config(config, {"scheme": {"num_iterations": 2}}, source="llama-ckpt")


def test_without_data_dir_the_hub_tasks_run():
    assert lm_eval_task_names(PAPER_TASKS, None) == HUB_TASKS
    assert lm_eval_task_names(["lambada_openai", "iiet_piqa"], "/data") == {
        "lambada": "iiet_lambada",
        "piqa": "iiet_piqa",
    }


# (d) the Table 1 report ---------------------------------------------------------------------------------------


def fake_output(values: dict[str, dict[str, float]]) -> dict:
    return {"results": {f"iiet_{task}": {f"{m},none": v for m, v in metrics.items()} for task, metrics in values.items()}}


def test_table_columns_and_average():
    accuracies = {"lambada": 0.30, "piqa": 0.65, "hellaswag": 0.35, "sciq": 0.78, "arc_challenge": 0.24, "winogrande": 0.52}
    metric = {c.task: c.metric for c in COLUMNS if c.is_accuracy}
    values = {task: {metric[task]: acc} for task, acc in accuracies.items()}
    values["lambada"]["perplexity"] = 47.02
    values["wikitext"] = {"word_perplexity": 25.71}
    values["piqa"]["acc"] = 0.99  # not a table column: PiQA's column is acc_norm
    results = {"model-a": fake_output(values), "model-b": fake_output({"piqa": {"acc_norm": 0.5}})}

    table = markdown_table(results)
    header, rule, row_a, row_b = table.strip().split("\n")
    assert header == (
        "| Model | Wiki. ppl | LMB. ppl | LMB. acc | PiQA acc_norm | Hella. acc_norm | SciQ acc | ARC-c acc_norm "
        "| Wino. acc | Avg. |"
    )
    assert row_a == "| model-a | 25.7 | 47.0 | 30.0 | 65.0 | 35.0 | 78.0 | 24.0 | 52.0 | 47.3 |"
    assert row_b.startswith("| model-b | – | – | – | 50.0 |") and row_b.endswith("| – |")
    _, rows = table_rows(results)
    assert rows[0]["Avg."] == pytest.approx(100 * sum(accuracies.values()) / 6)


def test_table_shows_stderrs_and_marks_limit_runs():
    metric = {c.task: c.metric for c in COLUMNS if c.is_accuracy}
    accuracies = {"lambada": 0.30, "piqa": 0.65, "hellaswag": 0.35, "sciq": 0.78, "arc_challenge": 0.24,
                  "winogrande": 0.52}
    stderrs = {"lambada": 0.006, "piqa": 0.011, "hellaswag": 0.005, "sciq": 0.013, "arc_challenge": 0.012,
               "winogrande": 0.014}
    values = {task: {metric[task]: acc, f"{metric[task]}_stderr": stderrs[task]} for task, acc in accuracies.items()}
    values["wikitext"] = {"word_perplexity": 25.71}  # lm-eval gives word perplexity no stderr ("N/A")
    full, partial = fake_output(values), fake_output(values)
    full["results"]["iiet_wikitext"]["word_perplexity_stderr,none"] = "N/A"
    partial["iiet"] = {"limit": 20}
    table = markdown_table({"full": full, "partial": partial})
    lines = table.strip().split("\n")
    assert lines[2] == ("| full | 25.7 | 30.0 ± 0.6 | 65.0 ± 1.1 | 35.0 ± 0.5 | 78.0 ± 1.3 | 24.0 ± 1.2 | 52.0 ± 1.4 "
                        "| 47.3 ± 0.4 |")
    assert lines[3].startswith("| partial † | 25.7 | 30.0 ± 0.6 |")
    assert lines[-1].startswith("† partial: --limit 20 scored at most that many documents per task")
    _, rows = table_rows({"full": full})
    average_stderr = 100 * math.sqrt(sum(se ** 2 for se in stderrs.values())) / 6  # a mean of six independent tasks
    assert rows[0]["Avg. stderr"] == pytest.approx(average_stderr) and rows[0]["limit"] is None
    assert "†" not in markdown_table({"full": full})


def test_plain_lm_eval_group_reports_the_papers_average_without_custom_kwargs_warnings(model, tokenizer, data_dir):
    """``--tasks iiet_table1`` through lm-eval itself (the plain CLI's route): the group's paper_acc is Avg."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from iiet.eval.harness import task_manager

    with logged_messages("lm_eval") as messages:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=4)
        output = lm_eval.simple_evaluate(model=lm, tasks=["iiet_table1"], task_manager=task_manager(data_dir),
                                         limit=2, log_samples=False)
    assert not [m for m in messages if "Custom kwargs" in m]
    group = output["results"]["iiet_table1"]
    _, (row,) = table_rows({"m": output})
    assert group["paper_acc,none"] * 100 == pytest.approx(row["Avg."])
    assert group["paper_acc_stderr,none"] * 100 == pytest.approx(row["Avg. stderr"])
    columns = {c.task: c.metric for c in COLUMNS if c.is_accuracy}
    for task, metric in columns.items():
        result = output["results"][f"iiet_{task}"]
        assert result["paper_acc,none"] == result[f"{metric},none"]  # each task's own Table 1 column


def test_table_shows_only_the_tasks_run():
    columns, rows = table_rows({"m": fake_output({"piqa": {"acc_norm": 0.6}, "sciq": {"acc": 0.8}})})
    assert [c.header for c in columns] == ["PiQA acc_norm", "SciQ acc"]
    assert rows[0]["Avg."] == pytest.approx(70.0)


# (e) the CLI ----------------------------------------------------------------------------------------------------


def test_cli_eval_smoke(checkpoint, data_dir, tmp_path, monkeypatch, capsys):
    from iiet import cli

    # Only this command: the test must not depend on the other packages' commands importing cleanly.
    monkeypatch.setattr(cli, "COMMANDS", {"eval": cli.COMMANDS["eval"]})
    out = tmp_path / "eval"
    # Two rows side by side; three short multiple-choice tasks keep it quick (every task runs in test (a)).
    cli.main(["eval", "--models", f"[{checkpoint},{checkpoint}]", "--tasks", "[piqa,sciq,winogrande]",
              "--data_dir", str(data_dir), "--limit", "2", "--device", "cpu", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert f"| {checkpoint} † |" in printed and f"| {checkpoint} #2 † |" in printed  # --limit runs are marked
    assert "† partial: --limit 2 scored at most" in printed and " ± " in printed
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["table"]) == 2 and all(row["Avg."] is not None for row in saved["table"])
    assert (out / "table.md").is_file() and (out / "results.csv").is_file()

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--models", f"[{checkpoint}]", "--tasks", "[mmlu]", "--data_dir", str(data_dir)])
    assert exit_info.value.code == 2 and "valid tasks" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--models", f"[{checkpoint}]", "--num_iterations", "2", "--data_dir", str(data_dir)])
    assert exit_info.value.code == 2 and "scheme" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "--num_iterations" in capsys.readouterr().out


# The integration, not just the run: an Euler-scheme iiet model and LlamaForCausalLM with the same weights give
# identical lm-eval results.


def test_iiet_euler_and_hf_llama_give_identical_lm_eval_results(model, tokenizer, data_dir, tmp_path):
    from iiet.models.convert import upcycle_llama

    euler = upcycle_llama(model, "euler").eval()
    tasks = ["wikitext", "lambada", "piqa", "arc_challenge", "winogrande"]
    results = evaluate(
        [model, euler],
        tokenizer=tokenizer, tasks=tasks, data_dir=data_dir, limit=3, batch_size=4,
    )
    llama_result, euler_result = (r["results"] for r in results.values())
    assert llama_result.keys() == euler_result.keys()
    for task, metrics in llama_result.items():
        for name, value in metrics.items():
            if isinstance(value, float) and "stderr" not in name:
                assert euler_result[task][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, name)
