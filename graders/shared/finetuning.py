"""What the graders of chapter 7 share on the trusted side: the course's data, tiny GPTs over a compact vocabulary,
probes run here with the reference, and the comparisons their mistakes and training runs need.

Both graders (ch07_instruction and ch07_dpo) train and generate with tiny GPTs (the support code's GPTModel)
whose vocabulary is GPT-2's tokens of the course's data renumbered from 0 (probe_kit/text.py says why): a grader
computes the vocabulary here, sends it to its probes, which build the same tokenizer in the worker, and runs the
very same probes with the reference here (`course.grading.probes.run_here`) to get the expected values.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from probe_kit import text  # registered by course.grading (probes.py): the files the worker loads

from course.grading.compare import expect_close, expect_count, expect_equal, expect_true
from course.grading.imports import plain_imports
from course.grading.inputs import reference_module

with plain_imports():
    import tiktoken  # noqa: F401 - imported here once, without rewriting, for the probes run on this side
    from torch.utils.data import DataLoader  # noqa: F401 - the same

    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer

DATA_FOLDER = Path(__file__).resolve().parents[2] / "data"
# A GPT small enough that generating and training take milliseconds; every course text (at most 96 tokens) fits.
TINY_GPT = {"context_length": 96, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False}


def course_data(name: str) -> list[dict]:
    """The entries of one of the course's data files (data/<name>)."""
    return json.loads((DATA_FOLDER / name).read_text("utf-8"))


def compact_vocabulary(texts) -> list[int]:
    """GPT-2's token ids of `texts`, sorted, with the end-of-text token last: compact id i is GPT-2 id
    vocabulary[i] (what the probes' CompactTokenizer is built from)."""
    return text.compact_vocabulary(texts, get_gpt2_tokenizer())


def compact_tokenizer(vocabulary) -> text.CompactTokenizer:
    """The tokenizer the probes build from `vocabulary`, on this side."""
    return text.CompactTokenizer(vocabulary, get_gpt2_tokenizer())


def tiny_config(vocabulary, **overrides) -> dict:
    """The tiny GPT's configuration for a compact `vocabulary` (overrides: e.g. drop_rate=0.3)."""
    return dict(TINY_GPT, vocab_size=len(vocabulary), **overrides)


def tiny_gpt(vocabulary, seed: int, **overrides) -> GPTModel:
    """A tiny reference GPT built after torch.manual_seed(seed), in eval mode; its state_dict goes to the probes."""
    return reference_module(GPTModel, seed, cfg=tiny_config(vocabulary, **overrides))


# -- the datasets of chapter 7 ------------------------------------------------------------------------------------

def expect_dataset(got, expected, *, problem: str, hint: str, entry_hint) -> None:
    """A dataset (InstructionDataset, PreferenceDataset) as its probe saw it, .length, .encoded_texts and .items,
    against the reference's encoded texts `expected`: `problem` and `hint` for encoded texts that are not one item
    per entry, `entry_hint(index)` (computed on failure) for the wrong item of entry `index`."""
    expect_count(got.length, len(expected), what="len(dataset)", hint="__len__ returns the number of entries.")
    expect_true(isinstance(got.encoded_texts, list) and len(got.encoded_texts) == len(expected),
                what="dataset.encoded_texts", problem=problem, hint=hint)
    for index, item in enumerate(expected):
        expect_equal(got.encoded_texts[index], item, what=f"dataset.encoded_texts[{index}]",
                     hint=partial(entry_hint, index))
        expect_equal(got.items[index], item, what=f"dataset[{index}]",
                     hint="__getitem__ returns self.encoded_texts[index].")


# -- naming mistakes in results that are not one float tensor ------------------------------------------------------

def numbers_match(tolerance: float):
    """A `matches` for numbers: the student's list (or dict of lists) has the mistake's length and every number
    within tolerance * max(1, |the mistake's number|)."""

    def matches(got, mistaken) -> bool:
        if isinstance(mistaken, dict):
            return all(matches(got[key], mistaken[key]) for key in mistaken)
        return len(got) == len(mistaken) and all(abs(float(value) - number) < tolerance * max(1.0, abs(number))
                                                 for value, number in zip(got, mistaken))

    return matches


def tensors_match(tolerance: float):
    """A `matches` for a float tensor: the mistake's shape and values within atol = rtol = tolerance (NaN and
    infinities where the mistake has them: a numerically unstable mistake gives them)."""

    def matches(got, mistaken) -> bool:
        return (isinstance(got, torch.Tensor) and got.shape == mistaken.shape
                and torch.allclose(got.double(), mistaken.double(), atol=tolerance, rtol=tolerance, equal_nan=True))

    return matches


# -- training runs -----------------------------------------------------------------------------------------------

def expect_losses(got, expected, *, what: str, hint) -> None:
    """The losses (or rewards) a short seeded training run tracked, within 1e-4 of the reference's run."""
    expect_close(torch.tensor([float(value) for value in got], dtype=torch.float64),
                 torch.tensor([float(value) for value in expected], dtype=torch.float64), atol=1e-4, rtol=1e-4,
                 what=what, hint=hint)
