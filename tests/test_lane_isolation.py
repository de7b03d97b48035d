"""Each student is graded as if alone (DESIGN.md, principle 10), also by a lane that grades many in a row.

A lane of `course grade DIR --jobs N` (and `nbgrader autograde`, which grades a class through one lane) keeps ONE
template worker (course/worker/launchers.py) whose forks grade its submissions one after the other. Here one
such launcher grades an attacker and then an honest chapter 3 notebook that looks for the attacker's traces
(files written by native code in /tmp, /dev/shm, its home and the folder of all homes; the attacker's output, or
an output file sought past the file-size limit; a full /tmp): the honest notebook must score exactly what it
scores alone. Also: a tmpfs cap that binds, a tree of 1,500 nested folders that is removed without crashing the
run, a clean-up problem that is noted on the submission, and a lane that dies taking its template and workers
along. Cases whose outcome depends on the isolation level run under bubblewrap (where this machine has it) and
under process isolation; /tmp and /dev/shm are the host's under process isolation (docs/trust-model.md), so
those cases run under bubblewrap only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from course.config import Course
from course.grading.runner import grade_notebook, make_launcher, worker_spec
from course.worker.runtime.guard import remove_tree
from course.worker.sandbox import TMPFS_SHARE, bubblewrap_problem
from tests.conftest import REPO
from tests.submissions.build import with_edits
from tests.submissions.hostile import SIMPLE

CH03 = "ch03_attention"
MEMORY_MB = 1536  # as in test_hostile_submissions.py: under bubblewrap /tmp and /dev/shm then hold 48 MB each
LEVELS = ["bubblewrap", "process"]
SOLUTION_BODY = ("def simplified_self_attention(inputs):\n    _look_for_traces()\n"
                 "    attn_scores = inputs @ inputs.T\n    attn_weights = torch.softmax(attn_scores, dim=-1)\n"
                 "    return attn_weights @ inputs\n")

# The honest submission: the solution, whose simplified_self_attention first looks for what an earlier submission
# could have left (with native code, as an attacker would: torch.from_file is not audited) and prints a lot to
# both streams, as tqdm and logging do. A trace fails that test, and the score drops below the score alone.
HONEST = '''import os, sys, torch

TOKEN = "@@TOKEN@@"
SCRATCH = @@SCRATCH@@  # the sandbox's /tmp and /dev/shm (bubblewrap only: under process isolation, the host's)


def _exists(path):
    try:
        torch.from_file(path, size=1, dtype=torch.uint8)
        return True
    except Exception:
        return False


def _look_for_traces():
    found = []
    home = os.environ["HOME"]
    homes = os.path.dirname(home)
    for folder in SCRATCH + [home, homes, os.path.join(home, "tmp")]:
        for name in (f"lane-leak-{TOKEN}.pt", f"lane-leak-{TOKEN}.npy"):
            if _exists(os.path.join(folder, name)):
                found.append(os.path.join(folder, name))
    others = sorted(set(os.listdir(homes)) - {os.path.basename(home)})
    if others:
        found.append("other homes: " + ",".join(others))
    for _ in range(200):  # a progress bar and a log: long stdout, long stderr
        print("epoch 1 loss 0.123 " * 30)
        print("progress |#####     | " * 30, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    size = os.fstat(2).st_size
    if size > 2**24:
        found.append(f"an output file of {size} bytes")
    elif size:
        output = torch.from_file("/proc/self/fd/2", size=size, dtype=torch.uint8).numpy().tobytes()
        if ("LANE-MARK-" + TOKEN).encode() in output:
            found.append("the output of an earlier submission")
    if SCRATCH:  # room in /tmp: half of it (48 MB at most)
        status = os.statvfs("/tmp")
        size = min(status.f_blocks * status.f_frsize // 2, 48 * 2**20)
        torch.save(torch.zeros(size // 4), f"/tmp/honest-{TOKEN}.pt")
    if found:
        raise RuntimeError("traces of an earlier submission: " + "; ".join(found))


''' + SOLUTION_BODY

# What attackers leave behind (each replaces the simplified_self_attention cell; all of it runs while loading).
LEAVE_FILES = '''import os, numpy, torch

TOKEN = "@@TOKEN@@"
home = os.environ["HOME"]
for folder in @@SCRATCH@@ + [home, os.path.dirname(home), os.path.join(home, "tmp")]:
    try:
        torch.save(torch.full((4,), 7.0), os.path.join(folder, f"lane-leak-{TOKEN}.pt"))
    except Exception:
        pass
    try:
        numpy.full(4, 7.0).tofile(os.path.join(folder, f"lane-leak-{TOKEN}.npy"))
    except Exception:
        pass

def simplified_self_attention(inputs):
    return inputs
'''

PRINT_A_SECRET = '''import sys

print("LANE-MARK-@@TOKEN@@")
print("LANE-MARK-@@TOKEN@@", file=sys.stderr)

def simplified_self_attention(inputs):
    return inputs
'''

SEEK_THE_OUTPUT = '''import os, sys

print("LANE-MARK-@@TOKEN@@")
print("LANE-MARK-@@TOKEN@@", file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()
for fd in (1, 2):
    os.lseek(fd, @@FILE_MB@@ * 2**20 + 4096, os.SEEK_SET)  # past the file-size limit: every later write fails

def simplified_self_attention(inputs):
    return inputs
'''

FILL_TMPFS = '''import os, torch

def _fill(folder):
    for number in range(100):
        try:
            torch.save(torch.zeros(8 * 2**20 // 4), os.path.join(folder, f"fill-{number}.pt"))  # 8 MB each
        except Exception as exc:
            status = os.statvfs(folder)
            mb = status.f_frsize / 2**20
            return f"{folder}: {status.f_blocks * mb:.0f} MB, {status.f_bfree * mb:.0f} MB free, after {number} files"
    return f"{folder}: never full"

REPORT = [_fill("/tmp"), _fill("/dev/shm")]

def simplified_self_attention(inputs):
    raise RuntimeError(" | ".join(REPORT))
'''

DEEP_AND_LOCKED = '''import os

home = os.environ["HOME"]
os.chdir(home)
os.mkdir("nested")
with open("nested/bottom.txt", "w") as handle:
    handle.write("the deepest file")
for _ in range(1499):  # 1,500 levels, past Python's recursion limit (shutil.rmtree recursed once per level),
    os.mkdir("wrap")   # built from the bottom up so that every path stays short
    os.rename("nested", "wrap/d")
    os.rename("wrap", "nested")
os.makedirs("locked/inner")
with open("locked/inner/secret.txt", "w") as handle:
    handle.write("for the next submission")
os.chmod("locked/inner", 0)
os.chmod("locked", 0o500)

def simplified_self_attention(inputs):
    return inputs
'''


def course_with(course: Course, isolation: str) -> Course:
    sandbox = course.config.sandbox.model_copy(update={"isolation": isolation, "memory_mb": MEMORY_MB})
    return Course(course.root, course.config.model_copy(update={"sandbox": sandbox}))


def needs(level: str) -> None:
    if level == "bubblewrap" and bubblewrap_problem():
        pytest.skip(f"bubblewrap is not available here: {bubblewrap_problem()}")


def notebook(course: Course, folder: Path, body: str, level: str, token: str) -> Path:
    scratch = ["/tmp", "/dev/shm"] if level == "bubblewrap" else []
    body = (body.replace("@@TOKEN@@", token).replace("@@SCRATCH@@", repr(scratch))
            .replace("@@FILE_MB@@", str(course.config.sandbox.file_mb)))
    return with_edits(course.solution_notebook(course.assignment(CH03)), folder / f"{CH03}.ipynb",
                      sources={SIMPLE: body})


class Lane:
    """One template launcher grading submissions one after the other, as a lane of `course grade` does."""

    def __init__(self, course: Course, level: str):
        self.course = course_with(course, level)
        self.level = level
        self.assignment = self.course.assignment(CH03)
        self.launcher = make_launcher(worker_spec(self.course, self.assignment, "cpu", level))

    def grade(self, path: Path):
        return grade_notebook(self.course, self.assignment, path, device="cpu", launcher=self.launcher)


@pytest.fixture(scope="module")
def scratch_tmp(tmp_path_factory):
    """The module's temporary folder, in place of /tmp for the launchers made here: what they leave is seen."""
    folder = tmp_path_factory.mktemp("lane-tmp")
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    yield folder
    tempfile.tempdir = saved


@pytest.fixture(scope="module")
def lanes(course, scratch_tmp):
    """lanes(level): the module's lane of that isolation level, shared by its tests (made on first use)."""
    made: dict[str, Lane] = {}

    def get(level: str) -> Lane:
        needs(level)
        if level not in made:
            made[level] = Lane(course, level)
        return made[level]

    yield get
    for lane in made.values():
        lane.launcher.close()
    assert not list(scratch_tmp.iterdir()), "the launchers left files in the temporary folder"


@pytest.fixture(scope="module")
def alone(course, tmp_path_factory, scratch_tmp):
    """alone(level): the honest submission's score, graded alone by a launcher of its own."""
    scores: dict[str, float] = {}

    def get(level: str) -> float:
        if level not in scores:
            folder = tmp_path_factory.mktemp(f"alone-{level}")
            graded = course_with(course, level)
            report = grade_notebook(graded, graded.assignment(CH03), notebook(graded, folder, HONEST, level, "x"),
                                    device="cpu", isolation=level)
            assert not report.notes, report.notes
            scores[level] = report.score
        return scores[level]

    return get


def failures(report) -> dict[str, str]:
    return {t.name: t.message for t in report.tests if t.status != "passed"}


def attack_then_honest(lanes, alone, level, attack, tmp_path):
    """Grade `attack` and then the honest notebook in the same lane; returns both reports, having checked that the
    honest one scores what it scores alone."""
    lane = lanes(level)
    token = uuid.uuid4().hex[:8]
    attacker = lane.grade(notebook(lane.course, tmp_path / "attacker", attack, level, token))
    honest = lane.grade(notebook(lane.course, tmp_path / "honest", HONEST, level, token))
    assert failures(honest) == {}, failures(honest)
    assert honest.score == alone(level)
    assert not honest.notes, honest.notes
    return attacker, honest


@pytest.mark.parametrize("attack", [PRINT_A_SECRET, SEEK_THE_OUTPUT], ids=["print", "seek"])
@pytest.mark.parametrize("level", LEVELS)
def test_what_a_submission_prints_and_where_it_seeks_its_output_stay_its_own(lanes, alone, level, attack, tmp_path):
    """The attacker prints a marker (and seeks its stdout and stderr past the file-size limit): the next
    submission's long prints still work, and its stderr (read back through /proc/self/fd/2) holds no marker."""
    attacker, _ = attack_then_honest(lanes, alone, level, attack, tmp_path)
    assert attacker.score < attacker.max_score  # its own function returns the wrong values


@pytest.mark.parametrize("level", LEVELS)
def test_files_written_by_native_code_do_not_reach_the_next_submission(lanes, alone, level, tmp_path):
    """torch.save (no audit event) into its home, the folder of all homes, and under bubblewrap the sandbox's
    /tmp and /dev/shm; numpy's tofile where the audit hook lets it: none of it is there for the next one."""
    attack_then_honest(lanes, alone, level, LEAVE_FILES, tmp_path)


def test_tmpfs_is_capped_and_emptied_between_submissions(lanes, alone, tmp_path):
    """Writing past the cap of /tmp and of /dev/shm fails inside the sandbox (the filesystem is full at its cap:
    the memory does not grow), and the next submission finds both empty (it writes half of /tmp itself)."""
    attacker, _ = attack_then_honest(lanes, alone, "bubblewrap", FILL_TMPFS, tmp_path)
    message = failures(attacker)["test_simplified_self_attention"]
    cap = MEMORY_MB // TMPFS_SHARE
    for folder in ("/tmp", "/dev/shm"):
        assert f"{folder}: {cap} MB, 0 MB free" in message, message


def test_a_deep_and_locked_tree_is_removed_and_the_run_goes_on(course, alone, tmp_path, monkeypatch):
    """1,500 nested folders and a folder locked with chmod 0 in its home: grading completes, the next submission
    finds nothing, nothing needs a note, nothing stays in /tmp. (Paths past PATH_MAX: the remover's own test.)"""
    level = "bubblewrap" if not bubblewrap_problem() else "process"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    lane = Lane(course, level)
    try:
        token = uuid.uuid4().hex[:8]
        attacker = lane.grade(notebook(lane.course, tmp_path / "attacker", DEEP_AND_LOCKED, level, token))
        honest = lane.grade(notebook(lane.course, tmp_path / "honest", HONEST, level, token))
    finally:
        lane.launcher.close()
    assert len(attacker.tests) == 12
    assert not attacker.notes, attacker.notes
    assert failures(honest) == {}
    assert honest.score == alone(level)
    assert list(temporary.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder that cannot be removed (a mount point) needs root")
def test_what_cannot_be_removed_is_noted_on_the_submission_and_the_next_gets_a_fresh_sandbox(course, tmp_path,
                                                                                            monkeypatch):
    """A mount point in the folder of all homes cannot be removed: the problem is a note of the submission during
    whose clean-up it was met, grading goes on, and the next submission gets a fresh template and folder."""
    level = "bubblewrap" if not bubblewrap_problem() else "process"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    lane = Lane(course, level)
    solution = course.solution_notebook(course.assignment(CH03))
    mount_point = None
    try:
        lane.launcher.warm()
        mount_point = lane.launcher.folder / "homes" / "mounted"
        mount_point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]).returncode:
            pytest.skip("mount is not allowed here")
        first = lane.grade(solution)
        assert first.score == first.max_score
        assert len(first.notes) == 1, first.notes
        assert "Clean-up after grading" in first.notes[0]
        assert "mounted: a mount point" in first.notes[0]
        assert lane.launcher.folder is None, "the folder that holds what stayed is not used again"
        second = lane.grade(solution)
        assert (second.score, second.notes) == (second.max_score, [])
    finally:
        if mount_point is not None:
            subprocess.run(["umount", str(mount_point)])
        lane.launcher.close()
    assert list(temporary.iterdir()) == []


def test_remove_tree_handles_depth_locks_links_and_never_raises(tmp_path):
    """The remover itself: deeper than PATH_MAX and the recursion limit, folders without rights, links that must
    not be followed; a folder that is gone is no problem, and emptying keeps the top."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("must survive")
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(sys.getrecursionlimit() + 100):
        os.mkdir("n" * 60, dir_fd=fd)
        deeper = os.open("n" * 60, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.symlink(outside, "link", dir_fd=fd)
    os.close(fd)
    (top / "locked" / "inner").mkdir(parents=True)
    (top / "locked" / "inner" / "file").write_text("x")
    os.symlink(outside / "keep.txt", top / "locked" / "file-link")
    os.chmod(top / "locked" / "inner", 0)
    os.chmod(top / "locked", 0o500)
    assert remove_tree(str(top), keep_top=True) is None
    assert list(top.iterdir()) == []
    assert remove_tree(str(top)) is None
    assert not top.exists()
    assert remove_tree(str(top)) is None
    assert (outside / "keep.txt").read_text() == "must survive"


# -- a lane that dies takes its template and workers along -------------------------------------------------------

LANE_SCRIPT = '''
import json, os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from course.config import load_course
from course.grading.runner import make_launcher, worker_spec
from course.worker.client import WorkerClient

course = load_course(Path({repo!r}))
assignment = course.assignment("ch03_attention")
launcher = make_launcher(worker_spec(course, assignment, "cpu", {level!r}))
clients = [WorkerClient(cells=[], launcher=launcher) for _ in range(2)]  # two workers, as ranks are
for client in clients:
    client.start()
    client.load()
sleep = "def wait(student):\\n    import time\\n    time.sleep(600)\\n"
request = {{"op": "call", "probe_name": "wait", "probe_source": sleep, "kwargs": {{}}}}
for client in clients:  # both busy in student code
    client._send(request, time.monotonic() + 10, "")
time.sleep(0.5)
print(json.dumps({{"ready": True}}), flush=True)
time.sleep(600)
'''


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="templates are used on Linux only")
@pytest.mark.parametrize("level", LEVELS)
def test_template_and_workers_die_with_their_lane(level, tmp_path):
    """SIGKILL of the lane (the process that owns the launcher): within 5 s nothing of its sandbox runs."""
    needs(level)
    script = LANE_SCRIPT.format(repo=str(REPO), level=level)
    lane = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        line = lane.stdout.readline()
        if not json.loads(line or "{}").get("ready"):
            lane.wait(timeout=30)
            pytest.fail(f"the lane did not start: {line}{lane.stderr.read()[-3000:]}")
        started = descendants(lane.pid)
        assert len(started) >= 3, started  # the template and its two workers (and bubblewrap's processes)
    finally:
        lane.send_signal(signal.SIGKILL)
        lane.wait()
    deadline = time.monotonic() + 5
    while [pid for pid in started if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in started if alive(pid)] == []


@pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"bubblewrap is not available here: {bubblewrap_problem()}")
def test_sysv_ipc_objects_left_in_the_sandbox_are_removed(tmp_path):
    """Native code can make SysV shared memory (memory no limit of a worker counts), message queues and
    semaphores that outlive it: the template's clean-up removes them from the sandbox's IPC namespace."""
    from course.worker.runtime import bootstrap
    from course.worker.sandbox import bubblewrap_arguments

    (tmp_path / "bootstrap.py").write_bytes(Path(bootstrap.__file__).read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import ctypes, importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('bootstrap', {str(tmp_path / 'bootstrap.py')!r})\n"
        "bootstrap = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(bootstrap)\n"
        "libc = ctypes.CDLL(None)\n"
        "made = [libc.shmget(0, 2**20, 0o1600), libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600)]\n"
        "count = lambda: [len(open(f'/proc/sysvipc/{k}').read().splitlines()) - 1 for k in ('shm', 'msg', 'sem')]\n"
        "before = count()\nbootstrap._remove_ipc_objects()\n"
        "print(json.dumps({'made': made, 'before': before, 'after': count()}))\n"
    )
    args = bubblewrap_arguments(tmp_path, home, "cpu")
    result = subprocess.run(args + ["--", sys.executable, "-I", "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=home)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert -1 not in outcome["made"]
    assert (outcome["before"], outcome["after"]) == ([1, 1, 1], [0, 0, 0])
