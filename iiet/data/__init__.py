"""Data for iiet: text sources, byte-level BPE tokenizers, and packed memory-mapped token files.

The pipeline is ``sources -> train_tokenizer -> prepare_data -> PackedDataset``: documents are read from local
files, globs, Hugging Face datasets or the builtin (Python stdlib) corpus, tokenized once into fixed-length
sequences on disk (in parallel, resumable shards), and served to training as ``torch.LongTensor`` rows
(``labels = input_ids``).
"""

from iiet.data.packed import PackedDataset, check_compatible, load_meta, tokenizer_hash
from iiet.data.prepare import prepare_data
from iiet.data.sources import builtin_corpus, iter_corpus, iter_documents
from iiet.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "PackedDataset",
    "builtin_corpus",
    "check_compatible",
    "iter_corpus",
    "iter_documents",
    "load_meta",
    "load_tokenizer",
    "prepare_data",
    "tokenizer_hash",
    "train_tokenizer",
]
