"""GPT-2's tokenizer restricted to the tokens of a small corpus, for fast tests with tiny models.

A GPT with GPT-2's 50,257-token vocabulary spends nearly all its time in the output head and the softmax
over 50,257 logits, however small the rest of it is. The course's finetuning data use fewer than 2,000
distinct GPT-2 tokens, so the tests number just those tokens 0..V-1 (keeping GPT-2's segmentation
exactly) and build models with ``vocab_size = V``: the same texts, the same token boundaries, a small
output layer. ``<|endoftext|>`` (50256) is always in the vocabulary, as its last id.

The tokenizer is the one chapter 7's probes build (course/worker/runtime/probe_kit/text.py); here it is made
from a corpus and knows its length and its end-of-text id.

:func:`one_thread` runs such tiny models on one CPU thread: their matrices are so small that torch's
intra-op threads cost more than they save, by a factor of 10 to 100 when other processes share the cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import tiktoken
import torch

import course.grading.probes  # noqa: F401 - registers probe_kit, the package of the worker's probe helpers
from graders.shared.finetuning import TINY_GPT

# isort: split
from probe_kit import text

GPT2_END_OF_TEXT = text.GPT2_END_OF_TEXT


class CompactTokenizer(text.CompactTokenizer):
    """``encode``/``decode`` like a tiktoken encoding, with the ids of the corpus's tokens renumbered to
    0..len(self)-1.

    Text with a GPT-2 token that the corpus does not contain raises ``KeyError``.
    """

    def __init__(self, tokenizer: tiktoken.Encoding, corpus: Iterable[str]):
        super().__init__(text.compact_vocabulary(corpus, tokenizer), tokenizer)
        self.eot_token = self.compact_ids[GPT2_END_OF_TEXT]

    def __len__(self) -> int:
        return len(self.gpt2_ids)


def tiny_gpt_config(vocab_size: int, context_length: int = 96) -> dict:
    """A GPT of the book's architecture, small enough that a training step takes milliseconds (the graders' tiny
    GPT of chapter 7)."""
    return dict(TINY_GPT, vocab_size=vocab_size, context_length=context_length)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
