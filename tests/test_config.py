"""course.yml: the repository's own file loads, and every kind of mistake is a ConfigError naming file and key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from course.config import CONFIG_NAME, find_course_root, load_course
from course.errors import ConfigError

from .conftest import REPO

REPO_CONFIG = yaml.safe_load((REPO / CONFIG_NAME).read_text(encoding="utf-8"))
# Where chapter 3 sits in the list (chapter 2 is first); the messages name an entry by its index.
CH03 = [a["id"] for a in REPO_CONFIG["assignments"]].index("ch03_attention")
COUNT = len(REPO_CONFIG["assignments"])


# --------------------------------------------------------------------------------------------------------------
# The repository's course.yml


def test_repository_course_loads(course):
    assert course.root == REPO
    ids = [a.id for a in course.assignments]
    assert ids[0] == "ch02_text_data"
    assert {"ch03_attention", "ch04_gpt"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert course.config.device == "auto"
    assert course.title == "Build a Large Language Model (From Scratch)"
    ch03 = course.assignment("ch03_attention")
    assert ch03.reference == "reference.attention"
    assert ch03.support == []  # its notebook and checks import nothing from reference/
    assert ch03.points == 16
    assert ch03.timeout == 30


def test_course_paths(course):
    ch02 = course.assignment("ch02_text_data")
    assert course.module_path("reference.text_data") == REPO / "reference" / "text_data.py"
    assert course.module_path(ch02.reference).is_file()
    assert course.solution_notebook(ch02) == REPO / "solutions" / "ch02_text_data" / "ch02_text_data.ipynb"
    assert course.release_notebook(ch02) == REPO / "assignments" / "ch02_text_data" / "ch02_text_data.ipynb"
    assert course.grader_path(ch02) == REPO / "graders" / "ch02_text_data.py"
    assert course.solution_notebook(ch02).is_file()


def test_unknown_assignment_id_names_the_known_ones(course):
    with pytest.raises(KeyError, match="ch02_text_data, .*ch03_attention"):
        course.assignment("ch99_nothing")


def test_load_course_finds_the_root_from_a_subfolder(monkeypatch):
    monkeypatch.chdir(REPO / "reference")
    assert load_course().root == REPO


def test_explicit_root_never_falls_back_to_an_enclosing_course():
    with pytest.raises(ConfigError, match=r"reference/course\.yml: not found"):
        load_course(REPO / "reference")


# --------------------------------------------------------------------------------------------------------------
# Broken copies of course.yml


def make_root(tmp_path: Path, config=None, text: str | None = None) -> Path:
    """A course root in tmp_path: REPO's solutions/, graders/, reference/, checks/ and data/ linked in, and the given
    course.yml."""
    root = tmp_path / "course"
    root.mkdir()
    for name in ("solutions", "graders", "reference", "checks", "data"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    if text is None:
        text = yaml.safe_dump(config, sort_keys=False)
    (root / CONFIG_NAME).write_text(text, encoding="utf-8")
    return root


def config_error(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_course(root)
    message = str(info.value)
    assert str(root / CONFIG_NAME) in message, message
    return message


def modified(change) -> dict:
    config = copy.deepcopy(REPO_CONFIG)
    change(config)
    return config


def test_unmodified_copy_loads(tmp_path):
    course = load_course(make_root(tmp_path, REPO_CONFIG))
    assert course.root == tmp_path / "course"
    assert len(course.assignments) == COUNT


def test_unknown_top_level_key(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c.update(devices="cpu"))))
    assert "devices: unknown key" in message


def test_unknown_key_in_an_assignment(tmp_path):
    def typo(config):
        config["assignments"][CH03]["refrence"] = config["assignments"][CH03].pop("reference")

    message = config_error(make_root(tmp_path, modified(typo)))
    assert f"assignments[{CH03}] (ch03_attention).refrence: unknown key" in message
    assert f"assignments[{CH03}] (ch03_attention).reference: required key is missing" in message


def test_missing_points(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c["assignments"][0].pop("points"))))
    assert "assignments[0] (ch02_text_data).points: required key is missing" in message


def test_missing_title(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c.pop("title"))))
    assert "title: required key is missing" in message


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        (lambda c: c["assignments"][0].update(points=-1), "assignments[0] (ch02_text_data).points", "-1"),
        (lambda c: c["assignments"][CH03].update(timeout=0), f"assignments[{CH03}] (ch03_attention).timeout", "0"),
        (lambda c: c.update(device="gpu"), "device", "'gpu'"),
        (lambda c: c["assignments"][0].update(points="many"), "assignments[0] (ch02_text_data).points", "'many'"),
        (lambda c: c["assignments"][0].update(id="Ch02 Text"), "assignments[0] (Ch02 Text).id", "'Ch02 Text'"),
        (lambda c: c["assignments"][0].update(data="sms_spam_sample.tsv"), "assignments[0] (ch02_text_data).data",
         "'sms_spam_sample.tsv'"),
    ],
    ids=["negative-points", "zero-timeout", "unknown-device", "points-not-a-number", "bad-id", "data-not-a-list"],
)
def test_wrong_type_or_value(tmp_path, change, key, value):
    message = config_error(make_root(tmp_path, modified(change)))
    assert re.search(rf"^  {re.escape(key)}: .*\(got {re.escape(value)}\)$", message, re.M), message


def test_notebook_that_does_not_exist(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c["assignments"][0].update(notebook="ch2.ipynb"))))
    assert "assignments[0] (ch02_text_data).notebook: solutions/ch02_text_data/ch2.ipynb does not exist" in message


@pytest.mark.parametrize("notebook", ["../ch03_attention/ch03_attention.ipynb", "/etc/hostname", "sub/x.ipynb"])
def test_notebook_must_be_a_file_name(tmp_path, notebook):
    """Not a path: the same name is used in solutions/<id>/ and assignments/<id>/ (and an absolute one once crashed)."""
    message = config_error(make_root(tmp_path, modified(lambda c: c["assignments"][0].update(notebook=notebook))))
    assert "assignments[0] (ch02_text_data).notebook:" in message
    assert repr(notebook) in message


def test_grader_that_does_not_exist(tmp_path):
    message = config_error(
        make_root(tmp_path, modified(lambda c: c["assignments"][CH03].update(grader="graders/ch3.py"))))
    assert f"assignments[{CH03}] (ch03_attention).grader: graders/ch3.py does not exist" in message


def test_reference_module_that_does_not_exist(tmp_path):
    message = config_error(
        make_root(tmp_path, modified(lambda c: c["assignments"][CH03].update(reference="reference.atention")))
    )
    assert f"assignments[{CH03}] (ch03_attention).reference: reference/atention.py does not exist" in message


def test_reference_module_outside_the_reference_package(tmp_path):
    message = config_error(
        make_root(tmp_path, modified(lambda c: c["assignments"][0].update(reference="graders.ch02_text_data")))
    )
    assert "assignments[0] (ch02_text_data).reference: 'graders.ch02_text_data' is not a module" in message


def test_duplicate_assignment_ids(tmp_path):
    message = config_error(
        make_root(tmp_path, modified(lambda c: c["assignments"].append(copy.deepcopy(c["assignments"][0]))))
    )
    assert f"assignments[{COUNT}] (ch02_text_data).id: duplicate assignment id" in message
    assert "assignments[0] (ch02_text_data).id" not in message


def test_all_file_problems_are_reported_together(tmp_path):
    def break_two(config):
        config["assignments"][0]["grader"] = "graders/missing.py"
        config["assignments"][CH03]["notebook"] = "missing.ipynb"

    message = config_error(make_root(tmp_path, modified(break_two)))
    assert "2 problem(s)" in message
    assert "(ch02_text_data).grader" in message
    assert "(ch03_attention).notebook" in message


def test_invalid_yaml(tmp_path):
    message = config_error(make_root(tmp_path, text="title: x\nassignments: [\n  - id: a\n"))
    assert "not valid YAML" in message
    assert "line" in message  # PyYAML's mark: where the problem is


def test_not_utf8(tmp_path):
    root = make_root(tmp_path, REPO_CONFIG)
    (root / CONFIG_NAME).write_bytes(b"title: caf\xe9\n")
    assert "not UTF-8" in config_error(root)


@pytest.mark.parametrize("text", ["- title: x\n- assignments: []\n", "", "just a string\n"],
                         ids=["list", "empty-file", "scalar"])
def test_top_level_is_not_a_mapping(tmp_path, text):
    message = config_error(make_root(tmp_path, text=text))
    assert "expected a mapping" in message


def test_empty_assignments_list(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c.update(assignments=[]))))
    assert re.search(r"^  assignments: .*at least 1", message, re.M), message


def test_assignment_that_is_not_a_mapping(tmp_path):
    message = config_error(make_root(tmp_path, modified(lambda c: c["assignments"].append("ch04_gpt"))))
    assert re.search(rf"^  assignments\[{COUNT}\]: .*\(got 'ch04_gpt'\)$", message, re.M), message


def test_no_course_yml_anywhere(tmp_path):
    empty = tmp_path / "nowhere" / "deeper"
    empty.mkdir(parents=True)
    if any((folder / CONFIG_NAME).is_file() for folder in empty.parents):
        pytest.skip(f"a {CONFIG_NAME} exists above {tmp_path}")
    with pytest.raises(ConfigError, match=rf"no course\.yml found in {re.escape(str(empty))}"):
        find_course_root(empty)


@pytest.mark.parametrize("grader", ["/etc/hostname", "../graders/ch02_text_data.py", "reference/attention.py"])
def test_grader_must_live_in_graders(tmp_path, grader):
    root = make_root(tmp_path, modified(lambda c: c["assignments"][0].update(grader=grader)))
    expected = r"assignments\[0\] \(ch02_text_data\)\.grader: .* must be a path inside graders/"
    with pytest.raises(ConfigError, match=expected):
        load_course(root)


def test_sandbox_settings_are_checked(tmp_path):
    def change(config):
        config["sandbox"] = {"isolation": "docker", "memory_mb": 10, "cpu_secs": 5}

    message = config_error(make_root(tmp_path, modified(change)))
    assert re.search(r"^  sandbox\.isolation: .*\(got 'docker'\)$", message, re.M), message
    assert re.search(r"^  sandbox\.memory_mb: .*\(got 10\)$", message, re.M), message
    assert "sandbox.cpu_secs: unknown key" in message


def test_sandbox_defaults(course):
    sandbox = course.config.sandbox
    assert (sandbox.isolation, sandbox.memory_mb, sandbox.cpu_seconds, sandbox.file_mb) == ("auto", 4096, 600, 64)


# --------------------------------------------------------------------------------------------------------------
# What follows from the id: an entry holds only what differs


def test_notebook_grader_and_timeout_follow_from_the_id(tmp_path):
    minimal = {"title": "A course", "assignments": [{"id": "ch03_attention", "title": "Attention",
                                                     "reference": "reference.attention", "points": 16}]}
    course = load_course(make_root(tmp_path, minimal))
    ch03 = course.assignment("ch03_attention")
    assert (ch03.notebook, ch03.grader, ch03.timeout) == ("ch03_attention.ipynb", "graders/ch03_attention.py", 30)
    assert course.solution_notebook(ch03) == course.root / "solutions" / "ch03_attention" / "ch03_attention.ipynb"


def test_an_explicit_value_wins(tmp_path):
    def explicit(config):
        config["assignments"][CH03].update(grader="graders/ch04_gpt.py", timeout=5)

    root = make_root(tmp_path, modified(explicit))
    (root / "solutions").unlink()  # a notebook of another name: solutions/ch03_attention/attention.ipynb
    (root / "solutions" / "ch03_attention").mkdir(parents=True)
    (root / "solutions" / "ch03_attention" / "attention.ipynb").symlink_to(
        REPO / "solutions" / "ch03_attention" / "ch03_attention.ipynb")
    config = yaml.safe_load((root / CONFIG_NAME).read_text(encoding="utf-8"))
    config["assignments"] = [config["assignments"][CH03] | {"notebook": "attention.ipynb"}]
    (root / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    ch03 = load_course(root).assignment("ch03_attention")
    assert (ch03.notebook, ch03.grader, ch03.timeout) == ("attention.ipynb", "graders/ch04_gpt.py", 5)


def test_the_repository_entries_hold_no_default(tmp_path):
    """course.yml repeats nothing that follows from the id."""
    for entry in REPO_CONFIG["assignments"]:
        assert entry.get("notebook") != f"{entry['id']}.ipynb", entry["id"]
        assert entry.get("grader") != f"graders/{entry['id']}.py", entry["id"]
        assert entry.get("timeout") != 30, entry["id"]
        assert "support" not in entry, entry["id"]
