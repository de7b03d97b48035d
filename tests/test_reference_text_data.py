"""Tests of reference/text_data.py (chapter 2: working with text data)."""

from __future__ import annotations

import inspect
import math

import pytest
import tiktoken
import tiktoken.load
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from reference.text_data import (
    GPTDatasetV1,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    build_vocab,
    create_dataloader_v1,
    create_input_embeddings,
    simple_tokenize,
)

# Original text written for these tests (not the book's short story).
TRAIN_TEXT = (
    "In the sunlit terraces of the old town, do you like tea? Many do. "
    'The baker said: "Bread first; tea later." (He was right!) It\'s late--go home.'
)

STORY = (
    "The lighthouse keeper counted the ships every evening. Some nights there were none, and he wrote "
    "a zero in his notebook with the same care as a seven. <|endoftext|> Years later, a student found "
    "the notebooks in a box under the stairs and read them, one page at a time, until the lamp went out."
)


def _no_download(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args!r}")


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    """An empty tiktoken cache directory, with downloads made impossible."""
    cache_dir = tmp_path_factory.mktemp("tiktoken-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
        mp.setattr(tiktoken.load, "read_file", _no_download)
        yield cache_dir


@pytest.fixture(scope="module")
def gpt2(tiktoken_cache):
    from reference.tiktoken_offline import get_gpt2_tokenizer

    return get_gpt2_tokenizer()


# --- simple_tokenize ----------------------------------------------------------------------------------


def test_simple_tokenize_book_example():
    assert simple_tokenize("Hello, world. Is this-- a test?") == [
        "Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?",
    ]


def test_simple_tokenize_splits_every_punctuation_mark_and_drops_whitespace():
    text = "It's  the last--\n(he said) \"yes\";\t_ok_: fine!"
    assert simple_tokenize(text) == [
        "It", "'", "s", "the", "last", "--", "(", "he", "said", ")", '"', "yes", '"', ";",
        "_", "ok", "_", ":", "fine", "!",
    ]


def test_simple_tokenize_keeps_special_tokens_and_single_dashes_whole():
    assert simple_tokenize("tea <|endoftext|> well-known") == ["tea", "<|endoftext|>", "well-known"]
    assert simple_tokenize("   \n ") == []


# --- build_vocab --------------------------------------------------------------------------------------


def test_build_vocab_sorts_unique_tokens_and_numbers_them_from_zero():
    vocab = build_vocab(["the", "cat", "the", "a", "Zebra", ","])
    # sorted(): punctuation, then capitals, then lower case.
    assert list(vocab.items()) == [(",", 0), ("Zebra", 1), ("a", 2), ("cat", 3), ("the", 4)]


def test_build_vocab_appends_special_tokens_in_the_given_order():
    tokens = ["b", "a", "c"]
    vocab = build_vocab(tokens, special_tokens=["<|endoftext|>", "<|unk|>"])
    assert vocab == {"a": 0, "b": 1, "c": 2, "<|endoftext|>": 3, "<|unk|>": 4}
    reversed_order = build_vocab(tokens, special_tokens=("<|unk|>", "<|endoftext|>"))
    assert reversed_order["<|unk|>"] == 3
    assert reversed_order["<|endoftext|>"] == 4


def test_build_vocab_does_not_duplicate_a_special_token_already_present():
    vocab = build_vocab(["tea", "<|endoftext|>", "milk"], special_tokens=["<|endoftext|>", "<|unk|>"])
    assert vocab == {"<|endoftext|>": 0, "milk": 1, "tea": 2, "<|unk|>": 3}
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_build_vocab_of_a_text_has_consecutive_ids():
    tokens = simple_tokenize(TRAIN_TEXT)
    vocab = build_vocab(tokens, special_tokens=["<|endoftext|>", "<|unk|>"])
    assert len(vocab) == len(set(tokens)) + 2
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert list(vocab)[: len(set(tokens))] == sorted(set(tokens))


# --- SimpleTokenizerV1 / V2 ---------------------------------------------------------------------------


@pytest.fixture
def vocab():
    return build_vocab(simple_tokenize(TRAIN_TEXT), special_tokens=["<|endoftext|>", "<|unk|>"])


@pytest.mark.parametrize("tokenizer_class", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_tokenizer_mappings_are_inverse(tokenizer_class, vocab):
    tokenizer = tokenizer_class(vocab)
    assert tokenizer.str_to_int == vocab
    assert tokenizer.int_to_str == {i: s for s, i in vocab.items()}
    assert len(tokenizer.int_to_str) == len(vocab)


@pytest.mark.parametrize("tokenizer_class", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_tokenizer_encodes_to_vocabulary_ids_and_round_trips(tokenizer_class, vocab):
    tokenizer = tokenizer_class(vocab)
    text = "In the old town, do you like tea? Many do."
    ids = tokenizer.encode(text)
    assert ids == [vocab[token] for token in simple_tokenize(text)]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("tokenizer_class", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_decode_removes_the_space_before_punctuation(tokenizer_class, vocab):
    tokenizer = tokenizer_class(vocab)
    ids = [vocab[t] for t in ["Many", "do", ",", "tea", "!", "(", "He", ")", "?", "."]]
    assert tokenizer.decode(ids) == "Many do, tea!( He)?."
    # The double dash is not punctuation for decode: it keeps its spaces.
    assert tokenizer.decode([vocab["late"], vocab["--"], vocab["go"]]) == "late -- go"


def test_decode_colon_and_semicolon_differ_between_v1_and_v2(vocab):
    ids = [vocab[t] for t in ["The", "baker", "said", ":", "Bread", "first", ";", "tea"]]
    assert SimpleTokenizerV1(vocab).decode(ids) == "The baker said : Bread first ; tea"
    assert SimpleTokenizerV2(vocab).decode(ids) == "The baker said: Bread first; tea"


def test_v1_raises_key_error_on_an_unknown_word(vocab):
    with pytest.raises(KeyError):
        SimpleTokenizerV1(vocab).encode("Hello, do you like tea?")


def test_v2_maps_unknown_words_to_unk(vocab):
    tokenizer = SimpleTokenizerV2(vocab)
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    ids = tokenizer.encode(text)
    unk = vocab["<|unk|>"]
    assert ids[0] == unk
    assert ids[-2] == unk
    assert ids.count(unk) == 2
    assert vocab["<|endoftext|>"] in ids
    assert tokenizer.decode(ids) == "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."


# --- GPTDatasetV1 -------------------------------------------------------------------------------------


class CountingTokenizer:
    """A stand-in tokenizer: any text becomes ids 1000, 1001, ...; records how it was called."""

    def __init__(self, num_tokens):
        self.token_ids = list(range(1000, 1000 + num_tokens))
        self.calls = []

    def encode(self, text, **kwargs):
        self.calls.append((text, kwargs))
        return list(self.token_ids)


def _expected_windows(token_ids, max_length, stride):
    """Windows computed independently: start every `stride` tokens while the shifted target still fits."""
    windows = []
    start = 0
    while start + max_length + 1 <= len(token_ids):
        windows.append((token_ids[start : start + max_length], token_ids[start + 1 : start + max_length + 1]))
        start += stride
    return windows


@pytest.mark.parametrize(
    ("num_tokens", "max_length", "stride", "expected_len"),
    [
        (10, 4, 1, 6),  # overlapping windows
        (10, 4, 2, 3),
        (10, 4, 4, 2),  # stride == max_length: no overlap
        (12, 4, 4, 2),  # a third window would need a 13th token for its target
        (13, 4, 4, 3),
        (10, 3, 5, 2),  # stride > max_length: tokens are skipped
        (20, 2, 7, 3),
        (5, 4, 1, 1),  # exactly one window
        (4, 4, 1, 0),  # max_length tokens: no target for the last position, so no window
        (3, 4, 1, 0),  # too short for one window
        (0, 4, 1, 0),
    ],
)
def test_dataset_windows(num_tokens, max_length, stride, expected_len):
    tokenizer = CountingTokenizer(num_tokens)
    dataset = GPTDatasetV1("any text", tokenizer, max_length=max_length, stride=stride)

    assert len(dataset) == expected_len
    assert len(dataset.input_ids) == len(dataset.target_ids) == expected_len
    expected = _expected_windows(tokenizer.token_ids, max_length, stride)
    assert len(expected) == expected_len
    for idx, (expected_input, expected_target) in enumerate(expected):
        input_ids, target_ids = dataset[idx]
        assert input_ids.dtype == torch.long
        assert target_ids.dtype == torch.long
        assert input_ids.tolist() == expected_input
        assert target_ids.tolist() == expected_target
        # Shift by one: the target of position j is the input at position j + 1.
        assert torch.equal(target_ids[:-1], input_ids[1:])


def test_dataset_tokenizes_once_allowing_end_of_text():
    tokenizer = CountingTokenizer(10)
    GPTDatasetV1("some text", tokenizer, max_length=4, stride=4)
    assert tokenizer.calls == [("some text", {"allowed_special": {"<|endoftext|>"}})]


def test_dataset_with_gpt2_tokenizer(gpt2):
    token_ids = gpt2.encode(STORY, allowed_special={"<|endoftext|>"})
    dataset = GPTDatasetV1(STORY, gpt2, max_length=8, stride=3)
    expected = _expected_windows(token_ids, 8, 3)
    assert len(dataset) == len(expected) > 10
    assert [dataset[i][0].tolist() for i in range(len(dataset))] == [w[0] for w in expected]
    assert [dataset[i][1].tolist() for i in range(len(dataset))] == [w[1] for w in expected]
    assert any(50256 in dataset[i][0].tolist() for i in range(len(dataset)))


# --- create_dataloader_v1 -----------------------------------------------------------------------------


def test_dataloader_signature_defaults():
    parameters = inspect.signature(create_dataloader_v1).parameters
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert list(parameters) == [
        "txt", "batch_size", "max_length", "stride", "shuffle", "drop_last", "num_workers",
    ]
    assert defaults == {
        "batch_size": 4, "max_length": 256, "stride": 128, "shuffle": True, "drop_last": True, "num_workers": 0,
    }


def test_dataloader_seeds_the_cache_and_passes_its_settings(tiktoken_cache, tmp_path, monkeypatch):
    # A fresh, empty cache directory: create_dataloader_v1 itself must seed it.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    loader = create_dataloader_v1(STORY, batch_size=3, max_length=4, stride=2, shuffle=True, drop_last=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
        "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    ]
    assert isinstance(loader, DataLoader)
    assert isinstance(loader.dataset, GPTDatasetV1)
    assert loader.batch_size == 3
    assert loader.drop_last is False
    assert loader.num_workers == 0
    assert isinstance(loader.sampler, RandomSampler)
    unshuffled = create_dataloader_v1(STORY, batch_size=3, max_length=4, stride=2, shuffle=False)
    assert isinstance(unshuffled.sampler, SequentialSampler)
    assert unshuffled.drop_last is True


@pytest.mark.parametrize(("batch_size", "max_length", "stride"), [(4, 4, 4), (3, 8, 2), (5, 6, 9)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_dataloader_batches(gpt2, batch_size, max_length, stride, drop_last):
    token_ids = gpt2.encode(STORY, allowed_special={"<|endoftext|>"})
    windows = _expected_windows(token_ids, max_length, stride)
    assert len(windows) % batch_size != 0  # so that drop_last makes a difference

    loader = create_dataloader_v1(
        STORY, batch_size=batch_size, max_length=max_length, stride=stride, shuffle=False, drop_last=drop_last
    )
    batches = list(loader)

    expected_batches = len(windows) // batch_size if drop_last else math.ceil(len(windows) / batch_size)
    assert len(loader) == len(batches) == expected_batches
    for k, (inputs, targets) in enumerate(batches):
        expected = windows[k * batch_size : (k + 1) * batch_size]
        assert inputs.shape == targets.shape == (len(expected), max_length)
        assert inputs.tolist() == [w[0] for w in expected]
        assert targets.tolist() == [w[1] for w in expected]
    assert batches[0][0].shape == (batch_size, max_length)
    if drop_last:
        assert all(inputs.shape[0] == batch_size for inputs, _ in batches)
    else:
        assert batches[-1][0].shape[0] == len(windows) % batch_size


def test_dataloader_shuffle_keeps_the_windows(gpt2):
    torch.manual_seed(0)
    loader = create_dataloader_v1(STORY, batch_size=2, max_length=4, stride=4, shuffle=True, drop_last=False)
    seen = sorted(tuple(row) for inputs, _ in loader for row in inputs.tolist())
    token_ids = gpt2.encode(STORY, allowed_special={"<|endoftext|>"})
    assert seen == sorted(tuple(w[0]) for w in _expected_windows(token_ids, 4, 4))


def test_dataloader_on_a_text_too_short_for_one_window(tiktoken_cache):
    loader = create_dataloader_v1("Too short.", batch_size=2, max_length=8, stride=8, shuffle=False)
    assert len(loader.dataset) == 0
    assert list(loader) == []


# --- create_input_embeddings --------------------------------------------------------------------------


@pytest.fixture
def embedding_layers():
    torch.manual_seed(123)
    vocab_size, context_length, emb_dim = 20, 7, 8
    return nn.Embedding(vocab_size, emb_dim), nn.Embedding(context_length, emb_dim)


def test_input_embeddings_shape_and_values(embedding_layers):
    token_layer, pos_layer = embedding_layers
    token_ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    embeddings = create_input_embeddings(token_ids, token_layer, pos_layer)
    assert embeddings.shape == (2, 5, 8)
    expected = token_layer.weight[token_ids] + pos_layer.weight[:5].unsqueeze(0)
    assert torch.equal(embeddings, expected)


def test_input_embeddings_add_the_position_of_each_token(embedding_layers):
    token_layer, pos_layer = embedding_layers
    token_ids = torch.full((3, 6), 7)  # the same token everywhere
    embeddings = create_input_embeddings(token_ids, token_layer, pos_layer)
    for b in range(3):
        for j in range(6):
            assert torch.allclose(embeddings[b, j] - token_layer.weight[7], pos_layer.weight[j], atol=1e-6)
    # Different positions give different vectors for the same token; every sequence gets the same ones.
    assert not torch.allclose(embeddings[0, 0], embeddings[0, 1])
    assert torch.equal(embeddings[0], embeddings[2])


def test_input_embeddings_use_only_the_first_num_tokens_positions(embedding_layers):
    token_layer, pos_layer = embedding_layers
    token_ids = torch.tensor([[0, 1, 2]])
    before = create_input_embeddings(token_ids, token_layer, pos_layer)
    with torch.no_grad():
        pos_layer.weight[3:] += 100.0  # positions beyond the sequence must not matter
    after = create_input_embeddings(token_ids, token_layer, pos_layer)
    assert torch.equal(before, after)

    before.sum().backward()
    assert pos_layer.weight.grad[:3].abs().sum() > 0
    assert pos_layer.weight.grad[3:].abs().sum() == 0
