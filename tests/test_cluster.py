"""Grading a class on a Dask cluster (course/cluster.py), on a real cluster: a `dask scheduler` and two
`dask worker --nthreads 1` processes on 127.0.0.1, started here as separate processes and shared by the module.

- A mixed class of chapter 3 (full, stub, variants, hostile, unreadable, mutants) gets from the cluster exactly
  the scores, statuses and messages of a local `--jobs 2` run, and the same result files.
- Ctrl-C in the client cancels what is queued: one result written, the rest "not graded", the scheduler forgets
  the rest.
- A worker process SIGKILLed in mid-run: its submission is graded elsewhere; nothing lost, nothing twice.
- A worker whose reference differs is refused with a message that names `reference`, before anything is graded,
  and in the task itself (for a worker that joins later).
- A submission that kills its worker every time is given up after the scheduler's bound (allowed-failures 1 here:
  two tries) and reported as such; the rest of the class is graded. The test's way to make a submission kill its
  worker: a Dask worker plugin, registered by this test only, that SIGKILLs its own worker process when the task
  of a student named "...kills-its-worker" starts executing (student code runs in the sandbox, which cannot reach
  the Dask worker: that is the point of it).
- The grading worker's install script (containers/grading-worker/install.sh) passes its --check.

The course is graded from a snapshot of the repository's course files, taken when the module starts: the client
and the workers then see the same course even while someone edits the working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from distributed import Client  # noqa: E402

from course import batch  # noqa: E402
from course import cluster as cluster_module  # noqa: E402
from course.cluster import ClusterError, DaskCluster, dispatcher_for  # noqa: E402
from course.config import load_course  # noqa: E402
from course.worker.sandbox import bubblewrap_problem  # noqa: E402
from tests.submissions.classroom import QUICK_HOSTILE, make_class  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ch03_attention"
# What a worker's course root holds (and what the install script's check needs: pyproject.toml, README.md).
COURSE_FILES = ("course.yml", "pyproject.toml", "README.md", "graders", "reference", "course", "data", "solutions",
                "assignments", "checks")
# The scheduler of these tests gives up on a submission after two dead workers (the default is four), and sends a
# worker one task at a time, so that a dying worker takes only the submission it was grading with it.
SCHEDULER_ENV = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
                 "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
# Every process of the module is killed after this long, whatever happens: a hung run then fails, it never waits.
WATCHDOG_SECONDS = 420
POISON = "kills-its-worker"


def snapshot(target: Path, source: Path = REPO) -> Path:
    target.mkdir(parents=True)
    for name in COURSE_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return target


class Processes:
    """The processes the module starts, each in its own session: killed with everything they started."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                       cwd=self.folder, start_new_session=True)
        with self.lock:
            self.started[name] = process
        return process

    def kill(self, name: str) -> None:
        with self.lock:
            process = self.started.pop(name, None)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the nanny and its worker process (one process group)
            except ProcessLookupError:
                pass
            process.wait(timeout=60)

    def kill_all(self) -> None:
        for name in reversed(list(self.started)):
            self.kill(name)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def worker_command(scheduler_file: Path, folder: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dask", "worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
            "--nthreads", "1", "--name", name, "--local-directory", str(folder), "--no-dashboard",
            "--preload", "course.cluster", *extra]


def worker_env(root: Path) -> dict[str, str]:
    """A worker grades with the course at `root`, and imports the course's packages from there."""
    return {"COURSE_ROOT": str(root), "PYTHONPATH": str(root)}


class Cluster:
    def __init__(self, folder: Path, root: Path, scheduler_file: Path, client: Client, processes: Processes):
        self.folder = folder
        self.root = root
        self.scheduler_file = scheduler_file
        self.client = client
        self.processes = processes

    def dispatcher(self) -> DaskCluster:
        return DaskCluster(self.scheduler_file, connect_timeout=30, worker_timeout=120)

    def workers(self) -> dict[str, str]:
        """The workers connected now: address -> name (a worker restarted by its nanny keeps its name)."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {address: str(worker.get("name")) for address, worker in info.items()}

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout} s\n{self.processes.log('scheduler')}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if bubblewrap_problem():
        pytest.skip(f"a class is graded under bubblewrap, which is not available here: {bubblewrap_problem()}")
    folder = tmp_path_factory.mktemp("cluster")
    root = snapshot(folder / "course")
    processes = Processes(folder)
    watchdog = threading.Timer(WATCHDOG_SECONDS, processes.kill_all)
    watchdog.daemon = True
    watchdog.start()
    client = None
    try:
        scheduler_file = folder / "scheduler.json"
        scheduler = processes.start("scheduler", [
            sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
            str(scheduler_file), "--no-dashboard"], env=SCHEDULER_ENV)
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert scheduler.poll() is None, processes.log("scheduler")
            assert time.monotonic() < deadline, processes.log("scheduler")
            time.sleep(0.1)
        for number in (1, 2):
            processes.start(f"worker{number}", worker_command(scheduler_file, folder / f"worker{number}",
                                                              f"worker{number}"), env=worker_env(root))
        local = grade_locally(folder, root)  # while the workers start (and before this process has a Client)
        client = Client(scheduler_file=str(scheduler_file), timeout=60, set_as_default=False)
        try:
            client.wait_for_workers(2, timeout=180)
        except TimeoutError:
            pytest.fail(f"the workers did not join:\n{processes.log('worker1')}\n{processes.log('worker2')}")
        cluster = Cluster(folder, root, scheduler_file, client, processes)
        cluster.classroom = local
        yield cluster
    finally:
        if client is not None:
            client.close(timeout=10)
        watchdog.cancel()
        processes.kill_all()


def grade_locally(folder: Path, root: Path):
    """The class (12: one of each kind) and its local `--jobs 2` results, the yardstick of every test here."""
    course = load_course(root)
    students = make_class(folder / "class", 12, ASSIGNMENT, hostile=QUICK_HOSTILE)
    items = batch.discover(course, folder / "class", ASSIGNMENT).items
    local = batch.grade_batch(course, items, jobs=2, out=folder / "local", device="cpu")
    return course, items, students, {result.item.student: result for result in local}


@pytest.fixture(scope="module")
def classroom(cluster):
    return cluster.classroom


def results_of(result: batch.BatchResult) -> list[tuple]:
    return [(t.name, t.status, t.score, t.max_score, t.message) for t in result.report.tests]


def without_durations(data):
    if isinstance(data, dict):
        return {key: without_durations(value) for key, value in data.items() if key != "duration"}
    if isinstance(data, list):
        return [without_durations(value) for value in data]
    return data


def test_the_cluster_gives_every_submission_the_score_of_a_local_run(cluster, classroom):
    course, items, students, local = classroom
    out = cluster.folder / "on-the-cluster"
    arrived: list[str] = []
    dispatcher = cluster.dispatcher()
    results = batch.grade_batch(course, items, out=out, device="cpu", dispatcher=dispatcher,
                                on_result=lambda result: arrived.append(result.item.student))
    assert sorted(arrived) == sorted(students)  # each once (the progress bar's count)
    assert len({r.report.score for r in results}) > 2  # a mixed class: full, partial and zero scores
    for result in results:
        expected = local[result.item.student]
        assert (result.report.score, result.status) == (expected.report.score, expected.status), result.item.student
        assert results_of(result) == results_of(expected), result.item.student
        assert result.report.notes == expected.report.notes, result.item.student
        written = json.loads(batch.result_path(out, result.item).read_text(encoding="utf-8"))
        written_locally = json.loads(batch.result_path(cluster.folder / "local", result.item).read_text("utf-8"))
        assert without_durations(written) == without_durations(written_locally), result.item.student
    assert dispatcher.workers_seen == set(cluster.workers())  # both workers graded


def test_ctrl_c_in_the_client_cancels_the_rest(cluster, classroom):
    course, items, _, local = classroom

    def interrupt(result):
        raise KeyboardInterrupt  # as grade_batch raises it after the result file of a Ctrl-C is whole

    results = batch.grade_batch(course, items, device="cpu", dispatcher=cluster.dispatcher(), on_result=interrupt)
    graded = [r for r in results if r.report is not None]
    assert len(graded) == 1
    assert graded[0].report.score == local[graded[0].item.student].report.score
    assert [r.status for r in results].count(batch.NOT_GRADED) == len(items) - 1

    def forgotten():
        return not cluster.client.run_on_scheduler(
            lambda dask_scheduler: [key for key in dask_scheduler.tasks if str(key).startswith("course-grade-")])

    cluster.wait_for(forgotten, "the scheduler forgets the cancelled submissions", timeout=30)


def test_a_worker_killed_in_mid_run_loses_nothing_and_counts_nothing_twice(cluster, classroom):
    course, items, _, local = classroom
    chosen = items[:4]
    pids = cluster.client.run(os.getpid)  # the worker processes (their nannies start new ones)
    arrived: list[str] = []
    killed: dict = {}

    def kill_a_busy_worker(result):
        arrived.append(result.item.student)
        if killed:
            return
        for address, keys in cluster.client.processing().items():
            if keys:
                killed.update(address=address, keys=[str(key) for key in keys])
                os.kill(pids[address], signal.SIGKILL)
                return

    results = batch.grade_batch(course, chosen, device="cpu", dispatcher=cluster.dispatcher(),
                                on_result=kill_a_busy_worker)
    assert killed, "no worker was grading when the first result came"
    assert killed["address"] not in cluster.workers()
    assert sorted(arrived) == sorted(item.student for item in chosen)  # nothing lost, nothing twice
    for result in results:
        expected = local[result.item.student]
        assert not result.course_problem, result.report.notes
        assert results_of(result) == results_of(expected), result.item.student
    # The submission that was being graded on the killed worker was graded again elsewhere, in full.
    lost = [item.student for item in chosen if any(batch.result_name(item.student) in key for key in killed["keys"])]
    assert lost


def test_a_worker_whose_reference_differs_is_refused(cluster, classroom, tmp_path):
    course, items, _, _ = classroom
    other = snapshot(tmp_path / "course", source=cluster.root)
    attention = other / "reference" / "attention.py"
    attention.write_text(attention.read_text(encoding="utf-8") + "\n# changed on one worker only\n", encoding="utf-8")
    cluster.processes.start("worker3", worker_command(cluster.scheduler_file, tmp_path / "worker3", "worker3",
                                                      "--no-nanny"), env=worker_env(other))
    try:
        cluster.wait_for(lambda: "worker3" in cluster.workers().values(), "the third worker joins")
        (third,) = [address for address, name in cluster.workers().items() if name == "worker3"]
        out = tmp_path / "grades"
        with pytest.raises(ClusterError) as refused:
            batch.grade_batch(course, items[:2], out=out, device="cpu", dispatcher=cluster.dispatcher())
        message = str(refused.value)
        assert f"worker {third} (host" in message
        assert f"course root {other})" in message
        assert "reference differs" in message
        assert "graders differs" not in message
        assert "nothing was graded" in message
        assert not out.exists()
        # A worker that joins after the check is refused by the task itself, before it grades.
        item = items[0]
        task = {"item": cluster_module._item_fields(item), "data": batch.read_submission(item), "device": "cpu",
                "isolation": None, "parts": batch._fingerprint(item, _parts(course))["course_fingerprint"]}
        answer = cluster.client.submit(cluster_module.grade_task, task, workers=[third], allow_other_workers=False,
                                       pure=False).result(timeout=120)
        assert answer["refused"]["differences"] == ["reference"]
        assert answer["refused"]["worker"] == third
    finally:
        cluster.processes.kill("worker3")
    cluster.wait_for(lambda: "worker3" not in cluster.workers().values(), "the third worker leaves")


def _parts(course) -> dict:
    from course.fingerprint import course_parts
    from course.grading.runner import worker_spec

    spec = worker_spec(course, course.assignment(ASSIGNMENT), "cpu", None)
    return course_parts(course, spec.device, spec.sandbox.isolation)


def kill_on_start(marker: str):
    """A worker plugin (test only) that SIGKILLs its worker process when a task whose key holds `marker` starts."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnStart(WorkerPlugin):
        name = "course-test-kill-on-start"

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and marker in str(key):
                os.kill(os.getpid(), signal.SIGKILL)

    return KillOnStart()


def test_a_submission_that_kills_its_worker_every_time_is_given_up(cluster, classroom, tmp_path):
    """Last in the module: both workers die, and their nannies start new ones."""
    course, items, _, local = classroom
    # Both workers up (the nanny of the one killed above starts a new one), so that the two tries meet two workers.
    cluster.wait_for(lambda: sorted(cluster.workers().values()) == ["worker1", "worker2"], "both workers are up")
    folder = tmp_path / "class" / "submitted"
    for item in items[:2]:
        shutil.copytree(item.notebook.parent.parent, folder / item.student)
    shutil.copytree(items[0].notebook.parent.parent, folder / f"zz-{POISON}")  # graded last, after the others
    chosen = batch.discover(course, folder.parent, ASSIGNMENT).items
    plugin = kill_on_start(POISON)
    cluster.client.register_plugin(plugin)
    try:
        results = {r.item.student: r for r in batch.grade_batch(course, chosen, device="cpu",
                                                                 out=tmp_path / "grades",
                                                                 dispatcher=cluster.dispatcher())}
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    given_up = results.pop(f"zz-{POISON}")
    assert given_up.course_problem
    assert given_up.status == "course error"
    assert "it was given up after 2 tries: each time, the Dask worker grading it died" in given_up.report.notes[0]
    assert all(t.score == 0 and "given up after 2 tries" in t.message for t in given_up.report.tests)
    assert not batch.result_path(tmp_path / "grades", given_up.item).exists()  # graded again on the next run
    for student, result in results.items():
        assert results_of(result) == results_of(local[student]), student


def test_without_a_scheduler_the_run_stops_with_a_clear_error(classroom):
    course, items, _, _ = classroom
    dispatcher = dispatcher_for("tcp://127.0.0.1:9", connect_timeout=1)
    with pytest.raises(ClusterError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1:9"):
        batch.grade_batch(course, items[:1], device="cpu", dispatcher=dispatcher)


def test_the_grading_workers_install_script_checks_out(tmp_path):
    """Every step of containers/grading-worker/install.sh, checked without installing anything (the image itself
    is not built in CI): the system packages, the user, the virtual environment, torch's pin, the course and its
    `cluster` extra (a dry run of pip against what this environment has), the checks of the installed course."""
    if shutil.which("bwrap") is None and not (os.geteuid() == 0 and shutil.which("apt-get")):
        pytest.skip("the script's first step needs bubblewrap, or root with apt-get to install it")
    root = snapshot(tmp_path / "course")
    script = REPO / "containers" / "grading-worker" / "install.sh"
    done = subprocess.run(["bash", str(script), "--check", "--course", str(root), "--venv", str(tmp_path / "venv"),
                           "--python", sys.executable], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("system packages", "user", "virtual environment", "torch", "the course", "checks"):
        assert f"ok: {step}" in done.stdout, done.stdout
    assert not (tmp_path / "venv").exists()
