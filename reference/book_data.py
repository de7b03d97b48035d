"""The book's data sets, fetched on demand, checked against a sha256, and cached.

The course's tests and default demos never use these files: they run on data the project writes itself
(``data/corpus/``). The book's own examples do use them, so this module fetches them when a person asks:

    python -m reference.book_data the-verdict [--dest DIR]
    python -m reference.book_data --list

or, from Python, ``fetch("the-verdict")``, which returns the path of the verified copy in the cache.

The cache is ``~/.cache/llm-course/`` unless the environment variable ``LLM_COURSE_CACHE`` names another
folder. A cached file is used only if its sha256 is the expected one; otherwise it is fetched again. A
download is written to a temporary file and moved into place only after its checksum matched, so the
cache never holds a partial or wrong file.

The SMS Spam Collection (chapter 6) has no published checksum. Its first download records the sha256 it
got in ``<cache>/sms_spam_collection.zip.sha256`` ("trust on first use"), and every later fetch is
checked against that record; delete the record to accept a new version.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable

__all__ = [
    "Dataset",
    "DATASETS",
    "BookDataError",
    "cache_dir",
    "sha256_of",
    "fetch",
    "extract_sms_spam_collection",
]

CACHE_ENV = "LLM_COURSE_CACHE"
_BOOK_RAW = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One downloadable file: where it comes from, what it is called in the cache, its sha256 if known."""

    name: str
    filename: str
    urls: tuple[str, ...]  # tried in order: the first is the book's, the others its mirrors
    sha256: str | None  # None: recorded on first download (see the module docstring)
    description: str


DATASETS = {
    dataset.name: dataset
    for dataset in (
        Dataset(
            name="the-verdict",
            filename="the-verdict.txt",
            urls=(f"{_BOOK_RAW}/ch02/01_main-chapter-code/the-verdict.txt",),
            sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            description="Edith Wharton's short story 'The Verdict' (public domain), chapters 2, 5 and appendix D",
        ),
        Dataset(
            name="instruction-data",
            filename="instruction-data.json",
            urls=(f"{_BOOK_RAW}/ch07/01_main-chapter-code/instruction-data.json",),
            sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            description="1,100 instruction/response pairs, chapter 7",
        ),
        Dataset(
            name="instruction-data-with-preference",
            filename="instruction-data-with-preference.json",
            urls=(f"{_BOOK_RAW}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",),
            sha256="305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
            description="instruction data with chosen and rejected responses, DPO (chapter 7 bonus)",
        ),
        Dataset(
            name="sms-spam-collection",
            filename="sms_spam_collection.zip",
            urls=(
                "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
            ),
            sha256=None,
            description="the UCI SMS Spam Collection (zip; --dest extracts SMSSpamCollection.tsv), chapter 6",
        ),
    )
}


class BookDataError(RuntimeError):
    """A data set could not be fetched, or its content is not the expected one."""


def cache_dir() -> pathlib.Path:
    """``$LLM_COURSE_CACHE`` if set (and not empty), else ``~/.cache/llm-course``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".cache" / "llm-course"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, in hex, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: pathlib.Path, opener: Callable, timeout: float) -> None:
    """Stream ``url`` into ``target`` (a temporary file)."""
    with opener(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _expected_sha256(dataset: Dataset, folder: pathlib.Path) -> tuple[str | None, pathlib.Path | None]:
    """(expected sha256 or None, path of the trust-on-first-use record or None)."""
    if dataset.sha256 is not None:
        return dataset.sha256, None
    record = folder / (dataset.filename + ".sha256")
    if record.is_file():
        return record.read_text(encoding="utf-8").split()[0], record
    return None, record


def fetch(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    opener: Callable = urllib.request.urlopen,
    timeout: float = 60.0,
) -> pathlib.Path:
    """The path of a verified copy of data set ``name``, downloading it into the cache if needed.

    Args:
        name: a key of :data:`DATASETS` ("the-verdict", "instruction-data",
            "instruction-data-with-preference", "sms-spam-collection").
        dest: also copy the file into this folder and return that path (for the SMS Spam Collection,
            extract ``SMSSpamCollection.tsv`` there instead, as the book does).
        opener: what opens a URL (``urllib.request.urlopen`` by default; tests pass their own).
        timeout: seconds before a connection is given up.

    Raises:
        BookDataError: unknown name; every URL failed (offline?); or the content's sha256 is wrong.
    """
    if name not in DATASETS:
        raise BookDataError(f"Unknown data set {name!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    folder = cache_dir()
    cached = folder / dataset.filename
    expected, record = _expected_sha256(dataset, folder)

    if not (cached.is_file() and expected is not None and sha256_of(cached) == expected):
        folder.mkdir(parents=True, exist_ok=True)
        _fetch_into_cache(dataset, cached, expected, record, opener, timeout)

    if dest is None:
        return cached
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if dataset.name == "sms-spam-collection":
        return extract_sms_spam_collection(cached, dest)
    target = dest / dataset.filename
    shutil.copyfile(cached, target)
    return target


def _fetch_into_cache(
    dataset: Dataset,
    cached: pathlib.Path,
    expected: str | None,
    record: pathlib.Path | None,
    opener: Callable,
    timeout: float,
) -> None:
    failures = []
    for url in dataset.urls:
        fd, tmp_name = tempfile.mkstemp(dir=cached.parent, prefix=cached.name + ".", suffix=".part")
        os.close(fd)
        tmp = pathlib.Path(tmp_name)
        try:
            try:
                _download(url, tmp, opener, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                failures.append(f"{url}: {getattr(error, 'reason', error)}")
                continue
            actual = sha256_of(tmp)
            if expected is not None and actual != expected:
                raise BookDataError(
                    f"The download of {dataset.name} from {url} has sha256 {actual}, expected {expected}: the "
                    "file has changed or is corrupted, so it was not kept."
                    + (f" (The expected value was recorded at first download in {record}; delete that file "
                       "to accept the new version.)" if record is not None else "")
                )
            os.replace(tmp, cached)  # atomic: the cache never holds a partial file
            if expected is None and record is not None:
                record.write_text(f"{actual}  {dataset.filename}\n", encoding="utf-8")
            return
        finally:
            tmp.unlink(missing_ok=True)
    raise BookDataError(
        f"Could not download {dataset.name}; are you offline? Tried:\n  " + "\n  ".join(failures) + "\n"
        f"To install it by hand, save the file as {cached}"
        + (f" (its sha256 must be {expected})." if expected else ".")
    )


def extract_sms_spam_collection(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> pathlib.Path:
    """Extract ``SMSSpamCollection`` from the zip into ``dest`` as ``SMSSpamCollection.tsv``; return its path."""
    dest = pathlib.Path(dest)
    target = dest / "SMSSpamCollection.tsv"
    try:
        with zipfile.ZipFile(zip_path) as archive, archive.open("SMSSpamCollection") as member:
            with open(target, "wb") as out:
                shutil.copyfileobj(member, out)
    except (zipfile.BadZipFile, KeyError) as error:
        raise BookDataError(f"{zip_path} is not the SMS Spam Collection zip: {error}") from error
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference.book_data",
        description=f"Fetch one of the book's data sets into the cache ({cache_dir()}), checking its sha256.",
    )
    parser.add_argument("name", nargs="?", choices=list(DATASETS), help="the data set")
    parser.add_argument("--dest", metavar="DIR", help="also copy (or extract) it into this folder")
    parser.add_argument("--list", action="store_true", help="list the data sets")
    args = parser.parse_args(argv)

    if args.list or args.name is None:
        for dataset in DATASETS.values():
            print(f"{dataset.name:34} {dataset.description}")
        return 0 if args.list else 2
    try:
        path = fetch(args.name, args.dest)
    except BookDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
