"""Byte-level BPE tokenizers: train one on local text, or load any Hugging Face tokenizer.

Training uses the ``tokenizers`` library (the GPT-2 recipe): text is split by the ByteLevel pre-tokenizer into
bytes mapped to printable characters, so every string is encodable and ``<unk>`` is never produced; BPE then learns
``vocab_size - 256 - 4`` merges over those 256 byte symbols. Special tokens get the first ids:
``<s>`` = 0 (bos), ``</s>`` = 1 (eos), ``<pad>`` = 2, ``<unk>`` = 3. No special token is added to encoded text
automatically; data preparation places ``</s>`` between documents itself.

The result is saved with ``save_pretrained`` so ``AutoTokenizer.from_pretrained(output_dir)`` reloads it, and
anything that takes a tokenizer name (data preparation, evaluation) accepts either such a folder or a hub name.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from iiet.data.sources import batched, iter_corpus
from iiet.errors import IIETError

SPECIAL_TOKENS: dict[str, str] = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
# Documents are handed to the Rust trainer in batches: one Python->Rust call per document is measurably slower.
_TRAIN_BATCH_DOCUMENTS = 256
# Files by which AutoTokenizer recognises a tokenizer folder (fast, sentencepiece, GPT-2 and BERT style).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def train_tokenizer(
    sources: list[str],
    output_dir: str | Path,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    max_documents: int | None = None,
    text_field: str = "text",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and save it where ``AutoTokenizer.from_pretrained`` finds it.

    Args:
        sources: Text sources (files, directories, globs, ``hf:NAME[:CONFIG]`` or ``builtin``).
        output_dir: Folder to write ``tokenizer.json`` and ``tokenizer_config.json`` to (created if missing).
        vocab_size: Size of the vocabulary, special tokens and the 256 byte symbols included.
        min_frequency: A pair must occur at least this often to be merged.
        max_documents: Train on at most this many documents (all sources together); ``None`` reads all.
        text_field: Field holding the text in structured records.

    Returns:
        The trained tokenizer, already saved to ``output_dir``.

    Raises:
        IIETError: ``vocab_size`` is too small to hold the byte alphabet, or a source is invalid.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise IIETError(
            f"vocab_size {vocab_size} is below {MIN_VOCAB_SIZE} (256 byte symbols + {len(SPECIAL_TOKENS)} special "
            f"tokens); pass --vocab_size {MIN_VOCAB_SIZE} or more"
        )
    if min_frequency < 1:
        raise IIETError(f"min_frequency must be at least 1, got {min_frequency}")
    documents = iter_corpus(sources, text_field=text_field, max_documents=max_documents)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even those the corpus lacks
        show_progress=False,  # tqdm below counts documents; the Rust bar would interleave with it
    )
    progress = tqdm(documents, desc="reading documents", unit="doc", total=max_documents)
    tokenizer.train_from_iterator(batched(progress, _TRAIN_BATCH_DOCUMENTS), trainer=trainer)
    progress.close()

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        clean_up_tokenization_spaces=False,  # byte-level decoding is already exact; "cleanup" would alter text
        **SPECIAL_TOKENS,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(output_dir))
    return wrapped


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by :func:`train_tokenizer`, any local HF tokenizer folder, or a hub name.

    Args:
        name_or_path: A folder with ``tokenizer.json``/``tokenizer_config.json``, or a Hugging Face hub name
            such as ``meta-llama/Llama-2-7b-hf``.

    Returns:
        The tokenizer.

    Raises:
        IIETError: It cannot be loaded; the message says why and what to pass instead.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if looks_local and not path.exists():  # fail now instead of asking the hub about a mistyped path
        raise IIETError(
            f"tokenizer folder {name!r} does not exist; train one with `iiet tokenizer-train` or fix the path"
        )
    if path.is_dir() and not any((path / file).is_file() for file in _TOKENIZER_FILES):
        raise IIETError(
            f"folder {name!r} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
            "train one there with `iiet tokenizer-train` or pass the folder that has them"
        )
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ... for the same user mistake
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IIETError(
            f"cannot load tokenizer {name!r} ({reason}); pass a folder written by "
            "`iiet tokenizer-train` or a Hugging Face name such as meta-llama/Llama-2-7b-hf "
            "(gated models need `hf auth login` first)"
        ) from error
