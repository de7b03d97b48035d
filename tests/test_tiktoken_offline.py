"""Tests of reference/tiktoken_offline.py: GPT-2's tokenizer through tiktoken, never downloaded."""

from __future__ import annotations

import hashlib
import inspect
import os
import pathlib
import shutil
import tempfile

import pytest
import requests
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public

from reference import tiktoken_offline
from reference.tiktoken_offline import (
    ENCODER_JSON_SHA256,
    ENCODER_JSON_URL,
    VOCAB_BPE_SHA256,
    VOCAB_BPE_URL,
    TokenizerFileError,
    cache_file_name,
    get_gpt2_tokenizer,
    packaged_bpe_file,
    seed_tiktoken_cache,
    tiktoken_cache_dir,
)

# Book / tiktoken figures (see FACTS.md).
VOCAB_BPE_CACHE_NAME = "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"
ENCODER_JSON_CACHE_NAME = "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"
EXPECTED_CACHE = {
    VOCAB_BPE_CACHE_NAME: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ENCODER_JSON_CACHE_NAME: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
PACKAGED_NAMES = ("vocab.bpe", "encoder.json")


class DownloadAttempted(AssertionError):
    """Raised by the patched network functions: a test tried to download something."""


def _no_download(*args, **kwargs):
    raise DownloadAttempted(f"a download was attempted: {args!r}")


@pytest.fixture
def offline(monkeypatch):
    """Make every network access fail, and give tiktoken an empty registry, so that it must build the
    gpt2 encoding from its cache (or try to download, which then fails loudly)."""
    monkeypatch.setattr(tiktoken.load, "read_file", _no_download)
    monkeypatch.setattr(requests, "get", _no_download)
    monkeypatch.setattr(requests.Session, "request", _no_download)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})


def _sha256_file(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files_in(directory: pathlib.Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --- constants and file names -------------------------------------------------------------------


def test_constants_are_the_hashes_tiktoken_expects():
    assert ENCODER_JSON_SHA256 == EXPECTED_CACHE[ENCODER_JSON_CACHE_NAME]
    assert VOCAB_BPE_SHA256 == EXPECTED_CACHE[VOCAB_BPE_CACHE_NAME]
    # The installed tiktoken's own gpt2 constructor names the same URLs and hashes.
    source = inspect.getsource(tiktoken_ext.openai_public.gpt2)
    for value in (ENCODER_JSON_SHA256, VOCAB_BPE_SHA256, ENCODER_JSON_URL, VOCAB_BPE_URL):
        assert value in source


def test_cache_file_names_are_the_sha1_of_the_urls():
    assert cache_file_name(VOCAB_BPE_URL) == VOCAB_BPE_CACHE_NAME
    assert cache_file_name(ENCODER_JSON_URL) == ENCODER_JSON_CACHE_NAME


@pytest.mark.parametrize("name", PACKAGED_NAMES)
def test_packaged_files_have_the_expected_sha256(name):
    expected = {"vocab.bpe": VOCAB_BPE_SHA256, "encoder.json": ENCODER_JSON_SHA256}[name]
    assert hashlib.sha256(packaged_bpe_file(name).read_bytes()).hexdigest() == expected


# --- seeding --------------------------------------------------------------------------------------


def test_seeding_a_given_dir_creates_the_two_cache_files(tmp_path):
    cache_dir = tmp_path / "not" / "yet" / "there"
    returned = seed_tiktoken_cache(cache_dir)
    assert pathlib.Path(returned) == cache_dir
    # Exactly the two sha1-named files, no temporary leftovers.
    assert _files_in(cache_dir) == set(EXPECTED_CACHE)
    for cache_name, sha256 in EXPECTED_CACHE.items():
        assert _sha256_file(cache_dir / cache_name) == sha256
        if os.name == "posix":  # readable by everyone, like the files tiktoken writes itself
            assert (cache_dir / cache_name).stat().st_mode & 0o444 == 0o444


def test_seeding_accepts_a_string_path(tmp_path):
    returned = seed_tiktoken_cache(str(tmp_path))
    assert isinstance(returned, pathlib.Path)
    assert _files_in(tmp_path) == set(EXPECTED_CACHE)


def test_seeding_twice_leaves_correct_files_alone(tmp_path):
    seed_tiktoken_cache(tmp_path)
    before = {name: os.stat(tmp_path / name) for name in EXPECTED_CACHE}
    seed_tiktoken_cache(tmp_path)
    after = {name: os.stat(tmp_path / name) for name in EXPECTED_CACHE}
    # An atomic rewrite would create a new inode: a correct file must not be rewritten.
    for name in EXPECTED_CACHE:
        assert (after[name].st_ino, after[name].st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert _files_in(tmp_path) == set(EXPECTED_CACHE)


@pytest.mark.parametrize("cache_name", sorted(EXPECTED_CACHE))
@pytest.mark.parametrize("bad_content", [b"", b"not the GPT-2 file"])
def test_a_wrong_cache_file_is_replaced(tmp_path, cache_name, bad_content):
    seed_tiktoken_cache(tmp_path)
    (tmp_path / cache_name).write_bytes(bad_content)
    seed_tiktoken_cache(tmp_path)
    assert _sha256_file(tmp_path / cache_name) == EXPECTED_CACHE[cache_name]
    assert _files_in(tmp_path) == set(EXPECTED_CACHE)


@pytest.mark.parametrize("corrupted", PACKAGED_NAMES)
def test_a_corrupted_packaged_file_is_detected(tmp_path, monkeypatch, corrupted):
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    for name in PACKAGED_NAMES:
        shutil.copyfile(packaged_bpe_file(name), source_dir / name)
    # Flip one byte in the middle of the file: same size, different sha256.
    path = source_dir / corrupted
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    monkeypatch.setattr(tiktoken_offline, "packaged_bpe_file", lambda name: source_dir / name)

    cache_dir = tmp_path / "cache"
    with pytest.raises(TokenizerFileError, match=corrupted.replace(".", r"\.")):
        seed_tiktoken_cache(cache_dir)
    # Nothing was written: neither the bad file nor its good partner.
    assert not cache_dir.exists() or _files_in(cache_dir) == set()


def test_the_patched_source_path_is_the_one_used(tmp_path, monkeypatch):
    # Counterpart of the corruption test: intact copies at a patched location seed correctly.
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    for name in PACKAGED_NAMES:
        shutil.copyfile(packaged_bpe_file(name), source_dir / name)
    used = []

    def fake_packaged_bpe_file(name):
        used.append(name)
        return source_dir / name

    monkeypatch.setattr(tiktoken_offline, "packaged_bpe_file", fake_packaged_bpe_file)
    seed_tiktoken_cache(tmp_path / "cache")
    assert sorted(used) == sorted(PACKAGED_NAMES)
    assert _files_in(tmp_path / "cache") == set(EXPECTED_CACHE)


def test_a_missing_packaged_file_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tiktoken_offline, "packaged_bpe_file", lambda name: tmp_path / "missing" / name)
    with pytest.raises(TokenizerFileError, match="vocab.bpe|encoder.json"):
        seed_tiktoken_cache(tmp_path / "cache")


# --- the cache directory, resolved as tiktoken does ----------------------------------------------


@pytest.mark.parametrize(
    ("tiktoken_env", "data_gym_env", "expected"),
    [
        ("tk", None, "tk"),
        ("tk", "dg", "tk"),
        (None, "dg", "dg"),
        (None, None, "tmp/data-gym-cache"),
    ],
)
def test_default_cache_dir_is_resolved_like_tiktoken(tmp_path, monkeypatch, tiktoken_env, data_gym_env, expected):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for var, value in (("TIKTOKEN_CACHE_DIR", tiktoken_env), ("DATA_GYM_CACHE_DIR", data_gym_env)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(tmp_path / value))

    assert tiktoken_cache_dir() == tmp_path / expected
    returned = seed_tiktoken_cache()
    assert pathlib.Path(returned) == tmp_path / expected
    assert _files_in(tmp_path / expected) == set(EXPECTED_CACHE)


def test_an_empty_cache_dir_variable_is_refused(monkeypatch):
    # tiktoken reads an empty TIKTOKEN_CACHE_DIR as "no cache", so it would download every time.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(TokenizerFileError, match="TIKTOKEN_CACHE_DIR"):
        seed_tiktoken_cache()


# --- tiktoken, offline ------------------------------------------------------------------------------


def test_without_seeding_tiktoken_would_try_to_download(tmp_path, monkeypatch, offline):
    # Proves that the `offline` fixture is effective: an empty cache means a download attempt.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadAttempted):
        tiktoken.get_encoding("gpt2")


def test_gpt2_loads_offline_from_a_seeded_empty_cache_dir(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert _files_in(tmp_path) == set()

    tokenizer = get_gpt2_tokenizer()

    assert _files_in(tmp_path) == set(EXPECTED_CACHE)
    assert tiktoken.registry.ENCODINGS["gpt2"] is tokenizer  # built now, from the seeded cache
    assert tokenizer.n_vocab == 50257
    assert tokenizer.encode("Hello, I am") == [15496, 11, 314, 716]


# --- GPT-2 tokenizer figures from the book -----------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken-cache")))
        mp.setattr(tiktoken.load, "read_file", _no_download)
        yield get_gpt2_tokenizer()


def test_vocabulary_size_and_end_of_text(gpt2):
    assert gpt2.n_vocab == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (
            "Hello, do you like tea? <|endoftext|> In the sunlit terraces",
            [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114],
        ),
        ("Akwirw ier", [33901, 86, 343, 86, 220, 959]),
        ("Hello, I am", [15496, 11, 314, 716]),
    ],
)
def test_book_token_ids(gpt2, text, ids):
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == ids
    assert gpt2.decode(ids) == text


def test_end_of_text_is_refused_unless_allowed(gpt2):
    with pytest.raises(ValueError, match="disallowed special token"):
        gpt2.encode("tea <|endoftext|> time")


def test_unknown_words_become_subword_pieces(gpt2):
    # BPE has no unknown token: an invented word is split into known pieces that decode back exactly.
    ids = gpt2.encode("Akwirw")
    assert len(ids) > 1
    assert [gpt2.decode([i]) for i in ids] == ["Ak", "w", "ir", "w"]
