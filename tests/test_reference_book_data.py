"""Tests of reference/book_data.py (the book's data sets on demand, with a checksum and a cache).

No test touches the network: the registry's URLs are replaced by file:// URLs of local files, or the
opener by one that fails as an offline machine's would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
import zipfile

import pytest

from reference import book_data
from reference.book_data import DATASETS, BookDataError, cache_dir, fetch

CONTENT = b"I had always thought Jack Gisburn rather a cheap genius...\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(book_data.CACHE_ENV, str(folder))
    return folder


def _serve(monkeypatch, tmp_path, name: str, content: bytes, sha256: str | None = "expected") -> None:
    """Point data set ``name`` at a local file:// URL holding ``content``."""
    source = tmp_path / "server" / DATASETS[name].filename
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(content)
    if sha256 == "expected":
        sha256 = hashlib.sha256(content).hexdigest()
    replaced = dataclasses.replace(DATASETS[name], urls=(source.as_uri(),), sha256=sha256)
    monkeypatch.setitem(DATASETS, name, replaced)


def _offline(url, timeout):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_the_registry_has_the_books_data_sets():
    expected = {"the-verdict", "instruction-data", "instruction-data-with-preference", "sms-spam-collection"}
    assert set(DATASETS) == expected


def test_the_registry_has_the_known_checksums():
    assert DATASETS["the-verdict"].sha256 == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert DATASETS["instruction-data"].sha256 == "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
    assert DATASETS["instruction-data-with-preference"].sha256 == (
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"
    )
    assert DATASETS["sms-spam-collection"].sha256 is None


def test_the_urls_are_the_books():
    assert DATASETS["the-verdict"].urls[0] == (
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
    )
    assert DATASETS["sms-spam-collection"].urls[0] == "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(book_data.CACHE_ENV)
    assert cache_dir().parts[-2:] == (".cache", "llm-course")


def test_a_matching_download_is_cached(monkeypatch, tmp_path, cache):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    path = fetch("the-verdict")
    assert path == cache / "the-verdict.txt"
    assert path.read_bytes() == CONTENT


def test_a_verified_cached_copy_is_used_without_the_network(monkeypatch, tmp_path):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    fetch("the-verdict")
    assert fetch("the-verdict", opener=_offline).read_bytes() == CONTENT


def test_a_mismatching_download_is_refused_and_not_kept(monkeypatch, tmp_path, cache):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT, sha256="0" * 64)
    with pytest.raises(BookDataError, match="has sha256 .* expected 0000"):
        fetch("the-verdict")
    assert list(cache.iterdir()) == []


def test_a_corrupted_cached_copy_is_fetched_again(monkeypatch, tmp_path, cache):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    fetch("the-verdict").write_bytes(b"tampered")
    assert fetch("the-verdict").read_bytes() == CONTENT


def test_offline_gives_a_clear_error(monkeypatch, tmp_path, cache):
    _serve(monkeypatch, tmp_path, "instruction-data", b"[]")
    with pytest.raises(BookDataError, match=r"(?s)are you offline\?.*name resolution.*save the file as"):
        fetch("instruction-data", opener=_offline)
    assert list(cache.iterdir()) == []


def test_the_command_reports_offline_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(book_data, "_download", lambda url, target, opener, timeout: _offline(url, timeout))
    assert book_data.main(["the-verdict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Could not download the-verdict; are you offline?")
    assert "Traceback" not in err


def test_a_mirror_is_tried_when_the_first_url_fails(monkeypatch, tmp_path):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    good = DATASETS["the-verdict"].urls[0]
    broken = (tmp_path / "missing.txt").as_uri()
    monkeypatch.setitem(DATASETS, "the-verdict", dataclasses.replace(DATASETS["the-verdict"], urls=(broken, good)))
    assert fetch("the-verdict").read_bytes() == CONTENT


def test_dest_gets_a_copy(monkeypatch, tmp_path):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    path = fetch("the-verdict", dest=tmp_path / "here")
    assert path == tmp_path / "here" / "the-verdict.txt"
    assert path.read_bytes() == CONTENT


def _sms_zip(tmp_path, text: bytes) -> bytes:
    archive = tmp_path / "build.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SMSSpamCollection", text)
        zf.writestr("readme", "about the data")
    return archive.read_bytes()


def test_unknown_checksum_is_recorded_on_first_download(monkeypatch, tmp_path, cache):
    content = _sms_zip(tmp_path, b"ham\tOk lar...\n")
    _serve(monkeypatch, tmp_path, "sms-spam-collection", content, sha256=None)
    fetch("sms-spam-collection")
    record = (cache / "sms_spam_collection.zip.sha256").read_text()
    assert record.split()[0] == hashlib.sha256(content).hexdigest()


def test_the_recorded_checksum_is_verified_afterwards(monkeypatch, tmp_path, cache):
    _serve(monkeypatch, tmp_path, "sms-spam-collection", _sms_zip(tmp_path, b"ham\tOk lar...\n"), sha256=None)
    fetch("sms-spam-collection")
    (cache / "sms_spam_collection.zip").write_bytes(b"changed")  # the cached copy no longer matches
    _serve(monkeypatch, tmp_path, "sms-spam-collection", _sms_zip(tmp_path, b"spam\tWIN!\n"), sha256=None)
    with pytest.raises(BookDataError, match="recorded at first download"):
        fetch("sms-spam-collection")


def test_the_sms_collection_is_extracted_as_tsv(monkeypatch, tmp_path):
    _serve(monkeypatch, tmp_path, "sms-spam-collection", _sms_zip(tmp_path, b"ham\tOk lar...\n"), sha256=None)
    path = fetch("sms-spam-collection", dest=tmp_path / "sms")
    assert path.name == "SMSSpamCollection.tsv"
    assert path.read_bytes() == b"ham\tOk lar...\n"


def test_an_unknown_name_is_refused():
    with pytest.raises(BookDataError, match="Unknown data set 'verdict'"):
        fetch("verdict")


def test_the_command_prints_the_path(monkeypatch, tmp_path, capsys, cache):
    _serve(monkeypatch, tmp_path, "the-verdict", CONTENT)
    assert book_data.main(["the-verdict"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "the-verdict.txt")


def test_the_command_lists_the_data_sets(capsys):
    assert book_data.main(["--list"]) == 0
    assert "sms-spam-collection" in capsys.readouterr().out
