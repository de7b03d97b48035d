"""Chapter 2: working with text data.

From raw text to the tensors an LLM consumes:

1. split text into tokens with a regular expression (:func:`simple_tokenize`),
2. give every distinct token an id (:func:`build_vocab`) and map text to ids and back
   (:class:`SimpleTokenizerV1`, and :class:`SimpleTokenizerV2`, which knows ``<|unk|>`` and
   ``<|endoftext|>``),
3. with GPT-2's byte pair encoding (tiktoken) instead, cut the token ids into input/target windows for
   next-token prediction (:class:`GPTDatasetV1`, :func:`create_dataloader_v1`),
4. turn a batch of token ids into vectors: token embeddings plus absolute position embeddings
   (:func:`create_input_embeddings`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import tiktoken
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reference.tiktoken_offline import seed_tiktoken_cache

__all__ = [
    "simple_tokenize",
    "build_vocab",
    "SimpleTokenizerV1",
    "SimpleTokenizerV2",
    "GPTDatasetV1",
    "create_dataloader_v1",
    "create_input_embeddings",
]

# Split on punctuation, on the double dash and on whitespace. The capturing group makes re.split keep the
# separators, so punctuation marks become tokens of their own.
_SPLIT_PATTERN = r'([,.:;?_!"()\']|--|\s)'


def simple_tokenize(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens, dropping whitespace.

    >>> simple_tokenize("Hello, world. Is this-- a test?")
    ['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']
    """
    pieces = re.split(_SPLIT_PATTERN, text)
    # re.split leaves empty strings and the whitespace separators themselves: keep the rest, stripped.
    return [item.strip() for item in pieces if item.strip()]


def build_vocab(tokens: Iterable[str], special_tokens: Iterable[str] = ()) -> dict[str, int]:
    """Map every distinct token to an integer id.

    The distinct tokens are sorted alphabetically and numbered from 0; then each special token (such as
    ``"<|endoftext|>"`` or ``"<|unk|>"``), in the given order, is appended unless it is already present.
    """
    all_tokens = sorted(set(tokens))
    for special in special_tokens:
        if special not in all_tokens:
            all_tokens.append(special)
    return {token: token_id for token_id, token in enumerate(all_tokens)}


class SimpleTokenizerV1:
    """Text <-> token ids with a fixed vocabulary; a word outside the vocabulary raises ``KeyError``."""

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = vocab  # token -> id
        self.int_to_str = {i: s for s, i in vocab.items()}  # id -> token

    def encode(self, text: str) -> list[int]:
        """The ids of the tokens of ``text``."""
        return [self.str_to_int[token] for token in simple_tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the tokens of ``ids`` with spaces, then remove the space before punctuation."""
        text = " ".join(self.int_to_str[i] for i in ids)
        return re.sub(r'\s+([,.?!"()\'])', r"\1", text)


class SimpleTokenizerV2:
    """Like :class:`SimpleTokenizerV1`, but a word outside the vocabulary becomes ``"<|unk|>"``.

    The vocabulary must contain ``"<|unk|>"`` (build it with ``special_tokens=["<|endoftext|>", "<|unk|>"]``).
    """

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = vocab  # token -> id
        self.int_to_str = {i: s for s, i in vocab.items()}  # id -> token

    def encode(self, text: str) -> list[int]:
        """The ids of the tokens of ``text``; unknown tokens get the id of ``"<|unk|>"``."""
        tokens = [token if token in self.str_to_int else "<|unk|>" for token in simple_tokenize(text)]
        return [self.str_to_int[token] for token in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the tokens of ``ids`` with spaces, then remove the space before punctuation (: and ; too)."""
        text = " ".join(self.int_to_str[i] for i in ids)
        return re.sub(r'\s+([,.:;?!"()\'])', r"\1", text)


class GPTDatasetV1(Dataset):
    """Input/target windows for next-token prediction, cut from one text with a sliding window.

    The text is tokenized once. A window of ``max_length`` token ids starts every ``stride`` tokens; its
    target is the same window shifted one token to the right, so ``target_ids[k][j]`` is the token that
    follows ``input_ids[k][j]``. A window is kept only if its target fits in the text, so a text of at most
    ``max_length`` tokens gives no window at all. With ``stride == max_length`` the windows do not overlap;
    with ``stride > max_length`` some tokens are skipped.
    """

    def __init__(self, txt: str, tokenizer, max_length: int, stride: int):
        self.input_ids = []
        self.target_ids = []

        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})

        # Window k starts at i = k * stride; i < len(token_ids) - max_length guarantees that the target
        # window token_ids[i + 1 : i + max_length + 1] is complete.
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i : i + max_length]
            target_chunk = token_ids[i + 1 : i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))  # (max_length,)
            self.target_ids.append(torch.tensor(target_chunk))  # (max_length,)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(
    txt: str,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of (inputs, targets) batches, each of shape (batch_size, max_length), from ``txt``.

    The text is tokenized with GPT-2's BPE tokenizer (tiktoken "gpt2", read from the offline cache).
    ``drop_last=True`` drops a last, incomplete batch, which would otherwise cause loss spikes in training.
    """
    seed_tiktoken_cache()  # GPT-2's BPE files come from an installed package: nothing is downloaded
    tokenizer = tiktoken.get_encoding("gpt2")

    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
    )


def create_input_embeddings(
    token_ids: torch.Tensor,
    token_embedding_layer: nn.Embedding,
    pos_embedding_layer: nn.Embedding,
) -> torch.Tensor:
    """Token embeddings plus absolute position embeddings.

    Args:
        token_ids: (batch, num_tokens) integer token ids.
        token_embedding_layer: nn.Embedding(vocab_size, emb_dim).
        pos_embedding_layer: nn.Embedding(context_length, emb_dim), with num_tokens <= context_length.

    Returns:
        (batch, num_tokens, emb_dim): row j of each sequence is the embedding of its token plus the
        embedding of position j; the same position vectors are added to every sequence of the batch.
    """
    num_tokens = token_ids.shape[1]
    token_embeddings = token_embedding_layer(token_ids)  # (batch, num_tokens, emb_dim)
    positions = torch.arange(num_tokens, device=token_ids.device)  # (num_tokens,) = 0, 1, ..., num_tokens - 1
    pos_embeddings = pos_embedding_layer(positions)  # (num_tokens, emb_dim)
    # Broadcasting adds the (num_tokens, emb_dim) position embeddings to each sequence of the batch.
    return token_embeddings + pos_embeddings  # (batch, num_tokens, emb_dim)
