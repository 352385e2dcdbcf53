"""``iiet tokenizer-train`` and ``iiet data-prepare``: the data commands of the CLI.

Each command is a typed function; ``iiet.cli`` turns its signature and docstring into ``--help``. A source is a
file, directory or glob (``.txt``/``.raw`` incl. WikiExtractor output, ``.jsonl``/``.json``, ``.parquet``),
``hf:NAME[:CONFIG]`` for a Hugging Face dataset, or ``builtin`` for the Python standard library's source files.

    iiet tokenizer-train --sources '[data/enwiki]' --output_dir tokenizers/enwiki-8k
    iiet data-prepare --sources '[data/enwiki]' --tokenizer tokenizers/enwiki-8k --output_dir data/enwiki-512
"""

from __future__ import annotations

from iiet.data.prepare import prepare_data
from iiet.data.tokenizer import train_tokenizer
from iiet.outputs import check_writable


def tokenizer_train(
    sources: list[str],
    output_dir: str,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    max_documents: int | None = None,
    text_field: str = "text",
) -> None:
    """Train a byte-level BPE tokenizer (special tokens <s>, </s>, <pad>, <unk>) and save it for AutoTokenizer.

    Args:
        sources: Text sources: files, directories, globs, hf:NAME[:CONFIG], or builtin (Python's standard library).
        output_dir: Folder to save the tokenizer to; pass it later as --tokenizer.
        vocab_size: Vocabulary size, including the 256 byte symbols and the 4 special tokens.
        min_frequency: Minimum count of a pair for it to be merged.
        max_documents: Train on at most this many documents in total (default: all).
        text_field: Field holding the text in .jsonl/.json/.parquet records and HF datasets.
    """
    check_writable(output_dir, "--output_dir")  # before reading any text
    tokenizer = train_tokenizer(
        sources, output_dir, vocab_size=vocab_size, min_frequency=min_frequency, max_documents=max_documents,
        text_field=text_field,
    )
    print(f"saved a {len(tokenizer)}-token tokenizer to {output_dir}")


def data_prepare(
    sources: list[str],
    tokenizer: str,
    output_dir: str,
    seq_len: int = 512,
    val_fraction: float = 0.01,
    max_documents: int | None = None,
    seed: int = 0,
    num_proc: int | None = None,
    text_field: str = "text",
    num_nodes: int = 1,
    node_rank: int = 0,
    max_replacement_share: float = 0.01,
) -> None:
    """Tokenize sources once into packed shards (seq_len tokens per row) indexed by meta.json.

    Documents are separated by the eos token and packed into rows of exactly seq_len tokens; whole documents are
    held out for validation. The sources are cut into pieces (runs of files, or dataset shards), tokenized in
    parallel into output_dir/shards/; an interrupted run resumes without redoing finished shards, and re-running
    with the same tokenizer, seq_len and sources reuses everything. Several machines can share the work through one
    output_dir on a shared file system (--num_nodes N --node_rank K on each).

    Args:
        sources: Text sources: files, directories, globs, hf:NAME[:CONFIG], or builtin (Python's standard library).
        tokenizer: Tokenizer folder (from iiet tokenizer-train) or Hugging Face name, e.g. meta-llama/Llama-2-7b-hf.
        output_dir: Folder to write shards/ and meta.json to.
        seq_len: Tokens per packed training sequence.
        val_fraction: Fraction of documents held out for validation (whole documents, chosen by seed).
        max_documents: Read at most this many documents in total (default: all; pieces are then read in order).
        seed: Seed of the validation-document choice.
        num_proc: Worker processes (default: every core this process may use).
        text_field: Field holding the text in .jsonl/.json/.parquet records and HF datasets.
        num_nodes: Machines preparing into the same output_dir; each takes every num_nodes-th piece.
        node_rank: This machine's index, 0 .. num_nodes - 1; the last to finish writes meta.json.
        max_replacement_share: Refuse a file whose share of undecodable (non-UTF-8) characters exceeds this
            (binary files are refused outright); 1 tokenizes anything.
    """
    check_writable(output_dir, "--output_dir")  # before reading any text
    prepare_data(
        sources, tokenizer, output_dir, seq_len=seq_len, val_fraction=val_fraction, max_documents=max_documents,
        seed=seed, num_proc=num_proc, text_field=text_field, num_nodes=num_nodes, node_rank=node_rank,
        max_replacement_share=max_replacement_share,
    )
