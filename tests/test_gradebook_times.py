"""When a submission was handed in: nbgrader's timestamp.txt, else the last commit of the student's repository,
read from its files without running git (course/gradebook/gitcommit.py), so that a hostile .git/config runs
nothing; links are never followed and a damaged repository gives a reason, not a time."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from course.gradebook.gitcommit import GitTimeError, apply_delta, committer_time, last_commit_time
from course.gradebook.times import parse_timestamp, submission_time

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: Path, *args: str, date: str | None = None) -> str:
    """git as the test's own trusted tool: no system or global configuration."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "s", "GIT_AUTHOR_EMAIL": "s@example.edu",
           "GIT_COMMITTER_NAME": "s", "GIT_COMMITTER_EMAIL": "s@example.edu"}
    if date:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = date
    done = subprocess.run([GIT, "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def repository(folder: Path, commits: int = 3, message: str = "work") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q", "-b", "main")
    for index in range(commits):
        (folder / "notebook.ipynb").write_text(f"{{}} {index}\n" * (index + 1))
        git(folder, "add", "-A")
        git(folder, "commit", "-q", "-m", message, date=f"2026-10-{10 + index}T2{index}:15:00+0{index}30")
    return folder


def head_time(folder: Path) -> dt.datetime:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return last_commit_time(fd)
    finally:
        os.close(fd)


def git_says(folder: Path, commit: str = "HEAD") -> dt.datetime:
    return dt.datetime.fromisoformat(git(folder, "log", "-1", "--format=%cI", commit))


# ------------------------------------------------------------------------------------------------------------
# The commit time, read as data


@needs_git
def test_the_commit_time_is_what_git_log_says_loose_and_packed(tmp_path):
    repo = repository(tmp_path / "student")
    assert head_time(repo) == git_says(repo) == dt.datetime(2026, 10, 12, 22, 15,
                                                            tzinfo=dt.timezone(dt.timedelta(hours=2, minutes=30)))
    git(repo, "gc", "-q")  # everything in a pack, the branch in packed-refs
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert head_time(repo) == git_says(repo)


@needs_git
def test_commits_stored_as_deltas_in_a_pack(tmp_path):
    """Commits with long identical messages are stored as deltas of each other by an aggressive gc."""
    repo = repository(tmp_path / "student", commits=8, message="a long message line\n" * 200)
    git(repo, "gc", "-q", "--aggressive")
    listing = git(repo, "verify-pack", "-v", *[str(p) for p in (repo / ".git/objects/pack").glob("*.idx")])
    assert any(len(line.split()) == 7 and line.split()[1] == "commit" for line in listing.splitlines())
    for commit in git(repo, "rev-list", "--all").split():
        (repo / ".git" / "HEAD").write_text(commit + "\n")  # detached at each commit in turn
        assert head_time(repo) == git_says(repo, commit), commit


@needs_git
def test_a_hostile_git_config_runs_nothing(tmp_path):
    repo = repository(tmp_path / "student")
    expected = git_says(repo)
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    with (repo / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {script}\n\thooksPath = {tmp_path}\n\tpager = {script}\n"
                     f"\tsshCommand = {script}\n[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {script}\n"
                     f"[diff]\n\texternal = {script}\n[include]\n\tpath = {tmp_path / 'more'}\n")
    for hook in ("post-checkout", "pre-commit", "reference-transaction"):
        shutil.copy(script, repo / ".git" / "hooks" / hook)
    # The threat is real: git itself runs the repository's fsmonitor command...
    subprocess.run([GIT, "-C", str(repo), "status"], capture_output=True, timeout=60,
                   env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
    assert marker.exists()
    marker.unlink()
    # ...and reading the time runs nothing at all.
    assert head_time(repo) == expected
    assert submission_time(tmp_path, Path("student")).when == expected
    assert not marker.exists()


@needs_git
def test_links_and_pointers_are_not_followed(tmp_path):
    real = repository(tmp_path / "elsewhere")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".git").symlink_to(real / ".git")
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    (pointer / ".git").write_text(f"gitdir: {real / '.git'}\n")
    head_link = repository(tmp_path / "head-link")
    (head_link / ".git" / "HEAD").unlink()
    (head_link / ".git" / "HEAD").symlink_to(real / ".git" / "HEAD")
    escape = repository(tmp_path / "escape")
    (escape / ".git" / "HEAD").write_text("ref: refs/../../../elsewhere/.git/HEAD\n")
    cases = {"linked": "symbolic link", "pointer": "a file", "head-link": "HEAD cannot be read",
             "escape": "not under refs/"}
    for name, reason in cases.items():
        with pytest.raises(GitTimeError, match=reason):
            head_time(tmp_path / name)
        found = submission_time(tmp_path, Path(name))
        assert found.when is None, name
        assert reason in found.detail, (name, found)
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "student").symlink_to(real)  # the submission's folder itself is a link
    found = submission_time(tmp_path / "class", Path("student"))
    assert found.when is None
    assert "a link" in found.detail


def test_damaged_repositories_give_a_reason(tmp_path):
    folder = tmp_path / "student"
    (folder / ".git" / "objects" / "ab").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ab" + "0" * 38 + "\n")
    with pytest.raises(GitTimeError, match="not in the repository"):
        head_time(folder)
    (folder / ".git" / "objects" / "ab" / ("0" * 38)).write_bytes(b"not zlib")
    with pytest.raises(GitTimeError, match="not valid zlib"):
        head_time(folder)
    (folder / ".git" / "objects" / "ab" / ("0" * 38)).write_bytes(zlib.compress(b"blob 3\0abc"))
    with pytest.raises(GitTimeError, match="not a commit"):
        head_time(folder)
    bomb = zlib.compress(b"commit 99999999\0" + b"\0" * 50_000_000)
    (folder / ".git" / "objects" / "ab" / ("0" * 38)).write_bytes(bomb)
    with pytest.raises(GitTimeError, match="larger than a commit"):
        head_time(folder)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    with pytest.raises(GitTimeError, match="names no commit yet"):
        head_time(folder)
    assert submission_time(tmp_path, Path("student")).detail.startswith("student: refs/heads/main names no commit")


def test_deltas_and_commit_lines_are_parsed_exactly():
    base = b"tree 1\ncommitter A <a@x> 1700000000 +0000\n\nsame message"
    # copy "tree " from the base, insert "2", copy the rest after the base's "1"
    delta = bytes([len(base), len(base)]) + bytes([0x91, 0, 5, 1]) + b"2" + bytes([0x91, 6, len(base) - 6])
    assert apply_delta(base, delta) == base.replace(b"tree 1", b"tree 2")
    with pytest.raises(GitTimeError):
        apply_delta(base, bytes([len(base) + 1, 3]) + b"\x03abc")
    with pytest.raises(GitTimeError):
        apply_delta(base, bytes([len(base), 200]) + bytes([0x91, 0, 200]))  # copies past the base
    assert committer_time(base) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    with pytest.raises(GitTimeError):
        committer_time(b"tree 1\n\ncommitter A <a@x> 1700000000 +0000\n")  # in the message, not a header


# ------------------------------------------------------------------------------------------------------------
# timestamp.txt


@pytest.mark.parametrize(("text", "expected", "assumed"), [
    ("2026-10-14 21:03:12.123456 UTC", dt.datetime(2026, 10, 14, 21, 3, 12, 123456, tzinfo=dt.UTC), ""),
    ("2026-10-14 23:03:12 +0200", dt.datetime(2026, 10, 14, 21, 3, 12, tzinfo=dt.UTC), ""),
    ("2026-10-14 23:03:12.5 Europe/Paris", dt.datetime(2026, 10, 14, 21, 3, 12, 500000, tzinfo=dt.UTC), ""),
    ("2026-10-14T21:03:12Z", dt.datetime(2026, 10, 14, 21, 3, 12, tzinfo=dt.UTC), ""),
    ("2026-10-14 21:03:12", dt.datetime(2026, 10, 14, 21, 3, 12, tzinfo=dt.UTC), "no time zone: read as UTC"),
])
def test_nbgrader_timestamps_are_read(text, expected, assumed):
    when, note = parse_timestamp(text)
    assert when == expected
    assert note == assumed


@needs_git
def test_timestamp_txt_comes_first_and_the_source_is_said(tmp_path):
    submission = tmp_path / "submitted" / "ann" / "ch03_attention"
    repository(submission)
    relative = Path("ann") / "ch03_attention"
    assert submission_time(tmp_path / "submitted", relative).source == "git commit"
    (submission / "timestamp.txt").write_text("2026-10-14 21:03:12.000000 UTC\n")
    found = submission_time(tmp_path / "submitted", relative)
    assert (found.source, found.when) == ("timestamp.txt", dt.datetime(2026, 10, 14, 21, 3, 12, tzinfo=dt.UTC))
    (submission / "timestamp.txt").write_text("yesterday, I promise\n")
    found = submission_time(tmp_path / "submitted", relative)
    assert found.source == "git commit"  # a timestamp.txt that is not a time is said, and git is asked instead
    (submission / "timestamp.txt").unlink()
    (submission / "timestamp.txt").symlink_to(tmp_path / "forged.txt")
    (tmp_path / "forged.txt").write_text("2020-01-01 00:00:00 UTC\n")
    assert submission_time(tmp_path / "submitted", relative).source == "git commit"  # the link is not followed
    shutil.rmtree(submission / ".git")
    found = submission_time(tmp_path / "submitted", relative)
    assert found.when is None
    assert "timestamp.txt cannot be read" in found.detail
    assert submission_time(tmp_path, Path(".")).detail.startswith("a notebook per student")
