"""Correct stand-ins for the parts of chapter 2's composites (probe_kit.parts.replaced swaps them in).

A bug in a part then costs only the part's own tests:

- ch02_text_data: the tokenizers call `simple_tokenize`, `create_dataloader_v1` builds a `GPTDatasetV1`;
- ch02_bpe: `BPETokenizerSimple` calls the notebook's helpers `pretokenize`, `merge_pair`, `most_frequent_pair`
  and `split_on_special_tokens`.

They behave as the notebooks ask (the book's section 2.2 split pattern, section 2.6's sliding window, GPT-2's
pre-tokenisation), and the trusted side calls the same functions to compute what the student's parts should
give. Only the standard library and torch are imported at load time; `pretokenize` imports `regex` (a
dependency of tiktoken, and imported by the BPE notebook's setup cell) when it first runs.
"""

import re

import torch
from torch.utils.data import Dataset

# -- ch02_text_data ------------------------------------------------------------------------------------------------

# One punctuation character, a double dash, or one whitespace character; the group keeps the separators.
SIMPLE_SPLIT = r'([,.:;?_!"()\']|--|\s)'


def simple_tokenize(text):
    """Words and punctuation of `text`, whitespace dropped (the book's section 2.2)."""
    return [item.strip() for item in re.split(SIMPLE_SPLIT, text) if item.strip()]


class GPTDatasetV1(Dataset):
    """Input-target windows of `max_length` token IDs, one starting every `stride` tokens (section 2.6)."""

    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        for begin in range(0, len(ids) - max_length, stride):  # the target window must fit too
            self.input_ids.append(torch.tensor(ids[begin:begin + max_length]))
            self.target_ids.append(torch.tensor(ids[begin + 1:begin + 1 + max_length]))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


# -- ch02_bpe --------------------------------------------------------------------------------------------------------

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def pretokenize(text):
    """GPT-2's pre-tokens of `text`, in order."""
    import regex  # \p{L} and \p{N} are Unicode classes that `re` does not know

    return regex.findall(GPT2_SPLIT_PATTERN, text)


def merge_pair(token_ids, pair, new_id):
    """A new list: each occurrence of `pair` in `token_ids`, scanned from the left, replaced by `new_id`."""
    out, position = [], 0
    while position < len(token_ids):
        if tuple(token_ids[position:position + 2]) == tuple(pair):
            out.append(new_id)
            position += 2
        else:
            out.append(token_ids[position])
            position += 1
    return out


def most_frequent_pair(pair_counts, words):
    """The pair of highest count in `pair_counts`; of equal counts, the first one met reading `words` in order."""
    best = max(pair_counts.values())
    for token_ids in words:
        for pair in zip(token_ids, token_ids[1:]):
            if pair_counts.get(pair) == best:
                return pair
    return max(pair_counts, key=pair_counts.get)  # counts of pairs that are in no word: the Counter's order


def split_on_special_tokens(text, special_tokens):
    """`text` cut around every occurrence of a special token (a piece of its own); no empty pieces."""
    if not special_tokens:
        return [text]
    alternatives = "|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True)))  # longest first
    return [piece for piece in re.split(f"({alternatives})", text) if piece != ""]


BPE_HELPERS = {"pretokenize": pretokenize, "merge_pair": merge_pair, "most_frequent_pair": most_frequent_pair,
               "split_on_special_tokens": split_on_special_tokens}
