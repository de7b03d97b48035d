"""Grading a class on a Dask cluster: `course grade DIR --scheduler ADDRESS` (docs/cluster.md).

`DaskCluster` is a dispatcher for `course.batch.grade_batch`, beside `LocalLanes`: everything else of a class
run (finding the submissions, the fingerprints, skipping what has not changed, the JSON files, grades.csv, the
summary, the progress bar) stays in `grade_batch`, in the instructor's process (the client). Dask's distributed
scheduler places the submissions on the workers, moves them off a worker that dies, and gives up on one that
ended its worker too often; this module only says what a task is and what its outcome means.

- A task is one submission: the client reads the notebook's bytes (`batch.read_submission`: the bytes, or why the
  submission is refused) and sends them, with the submission's names and the client's course fingerprint, as the
  task's arguments. Nothing else of the client's machine travels: no path is opened on a worker, and no `Course`
  object is pickled.
- A worker is a `dask worker --nthreads 1` process with its own copy of the course: the folder named by the
  environment variable COURSE_ROOT, else the checkout the `course` package was imported from (an editable
  install), else the nearest course.yml above its working folder. It loads that course once, and grades with
  `batch.grade_submission` exactly as a local lane does: the course's sandbox (bubblewrap), and one template worker
  kept by the process (`batch.launcher_for`), so that a submission costs a fork.
- A worker grades only with the course the client has. Each task carries the client's `course_parts`
  (course/fingerprint.py: graders, reference, course, data, course.yml, torch, device, isolation) and the worker
  compares them with its own: where one differs, the worker grades nothing and answers which parts differ, and
  the client stops the run with an error that names the worker and the parts. The workers connected at the start
  are asked before any submission is sent; the check in each task covers the workers that join later.
- A worker that dies (killed, out of memory, its machine gone) loses its submission to the scheduler, which
  grades it on another worker. One that killed `distributed.scheduler.allowed-failures` + 1 workers (3 + 1 by
  default) is erred by the scheduler with KilledWorker: the student gets a report that says it was given up after
  that many tries, as a problem of the course's (it is graded again on the next run), and the class run goes on.
- Ctrl-C in the client cancels the futures (the scheduler forgets every task not finished; a submission being
  graded finishes on its worker and is dropped) and returns: `grade_batch` writes what came back and marks the
  rest "not graded", as in a local run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import os
import socket
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from course import batch
from course.config import Course, find_course_root, load_course
from course.errors import CourseError, UsageError

COURSE_ROOT_VARIABLE = "COURSE_ROOT"
# How long the client waits for the scheduler to answer, and for a first worker to join it.
CONNECT_TIMEOUT = 30.0
WORKER_TIMEOUT = 120.0
INSTALL_ADVICE = ('grading on a Dask cluster needs Dask\'s distributed scheduler on this machine and on the workers: '
                  'pip install "llm-from-scratch-course[cluster]" (or pip install "dask[distributed]")')


class ClusterError(CourseError):
    """The cluster cannot grade this class as this machine would (a worker with another course, no worker, the
    scheduler gone): the instructor must fix the cluster. What was graded before is written and kept."""

    exit_code = 1


def dispatcher_for(address: str | os.PathLike, **options) -> DaskCluster:
    """The dispatcher for `course grade DIR --scheduler ADDRESS` (or course.yml's `cluster.scheduler`): a Dask
    scheduler's address (tcp://host:8786) or the path of a scheduler file (`dask scheduler --scheduler-file F`).
    A UsageError that says what to install when Dask is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_ADVICE) from None
    return DaskCluster(address, **options)


class DaskCluster:
    """Grades the submissions on the workers of a Dask scheduler (see the module's docstring)."""

    def __init__(self, address: str | os.PathLike, *, connect_timeout: float = CONNECT_TIMEOUT,
                 worker_timeout: float = WORKER_TIMEOUT, ahead: int | None = None):
        self.address = str(address)
        self.connect_timeout = connect_timeout
        self.worker_timeout = worker_timeout
        self.ahead = ahead  # submissions in flight at most (default: the live workers' threads, see _grade)
        self.workers_seen: set[str] = set()  # the workers that graded in the last run (for tests and logs)

    def run(self, course: Course, items: list[batch.BatchItem], todo: list[tuple[int, dict]], device: str | None,
            isolation: str | None, done: Callable[[int, dict, dict], None]) -> None:
        if not todo:
            return
        parts = todo[0][1]["course_fingerprint"]
        client = None
        running: dict = {}
        try:
            client = self._connect()
            self._check_workers(client, parts, items[todo[0][0]].assignment, device, isolation)
            self._grade(client, course, items, todo, parts, device, isolation, done, running)
        except KeyboardInterrupt:
            return  # grade_batch marks the rest "not graded"; the futures are cancelled below
        finally:
            if client is not None:
                _cancel(client, running)
                client.close(timeout=10)

    # -- the client's side ---------------------------------------------------------------------------------------
    def _connect(self):
        from distributed import Client

        where = self.address
        try:
            if os.path.isfile(where):
                client = Client(scheduler_file=where, timeout=self.connect_timeout, set_as_default=False)
            else:
                client = Client(where, timeout=self.connect_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"no Dask scheduler answers at {where} ({type(exc).__name__}: {exc}). Start one "
                               "(docs/cluster.md), or check the address: tcp://HOST:PORT or a scheduler file") from None
        try:
            client.wait_for_workers(1, timeout=self.worker_timeout)
        except TimeoutError:
            client.close()
            raise ClusterError(f"the Dask scheduler at {where} has no worker after {self.worker_timeout:g} s: start "
                               f"workers with `dask worker {where} --nthreads 1` (docs/cluster.md)") from None
        return client

    def _check_workers(self, client, parts: dict, assignment_id: str, device, isolation) -> None:
        """Ask every connected worker for its course's parts before anything is sent; raise if one differs."""
        answers = client.run(describe_worker, assignment_id, device, isolation, on_error="return")
        problems = []
        for address, answer in sorted(answers.items()):
            if isinstance(answer, OSError):
                continue  # it died or left meanwhile: the check in each task covers it should it come back
            if isinstance(answer, BaseException):
                answer = {"worker": address, "problem": f"could not be checked ({type(answer).__name__}: {answer})"}
            problem = refusal(answer, parts)
            if problem:
                problems.append(problem)
        if problems:
            raise ClusterError(_refused_message(problems, len(answers), graded=0))

    def _grade(self, client, course, items, todo, parts, device, isolation, done, running: dict) -> None:
        from distributed import as_completed

        waiting = deque(todo)
        run = uuid.uuid4().hex[:12]
        finished: set[int] = set()
        self.workers_seen = set()
        flow = as_completed(loop=client.loop)

        def send_more() -> None:
            # No more submissions in flight than the live workers have threads (each runs one at a time): the
            # scheduler then places each on an idle worker, never behind another submission. Sent ahead, a second
            # submission would wait on a worker that the first one kills, and the scheduler counts that death
            # against both: an innocent classmate could be given up beside the submission that kills its workers.
            ahead = self.ahead or max(1, sum(client.nthreads().values()))
            while waiting and len(running) < ahead:
                index, fingerprint = waiting.popleft()
                item = items[index]
                task = {"item": _item_fields(item), "data": batch.read_submission(item), "parts": parts,
                        "device": device, "isolation": isolation}
                # The key names the student (safely: batch.result_name) for the scheduler's dashboard and logs.
                key = f"course-grade-{batch.result_name(item.student)}-{item.assignment}-{run}-{index}"
                future = client.submit(grade_task, task, key=key, pure=False)
                running[future] = (index, fingerprint)
                flow.add(future)

        send_more()
        for future in flow:
            index, fingerprint = running.pop(future)
            outcome = self._outcome(course, items[index], future)
            if "refused" in outcome:
                raise ClusterError(_refused_message([outcome["refused"]], None, graded=len(finished)))
            if index not in finished:  # a key's result comes once; this keeps it so whatever the cluster does
                finished.add(index)
                done(index, fingerprint, outcome)
            send_more()

    def _outcome(self, course, item, future) -> dict:
        """What a finished future means for its submission: the worker's answer, or a report of why not."""
        from distributed import KilledWorker

        if future.status == "finished":
            answer = future.result()
            if isinstance(answer, dict) and "refused" in answer:
                return answer
            if isinstance(answer, dict) and isinstance(answer.get("outcome"), dict) and "report" in answer["outcome"]:
                self.workers_seen.add(answer.get("worker"))
                return answer["outcome"]
            return batch.course_problem_outcome(course, item,
                                                f"the Dask worker's answer is not a report: {answer!r:.200}")
        if future.cancelled():
            raise ClusterError(f"the Dask scheduler dropped the grading of {item.student} (was the scheduler "
                               "stopped or restarted?): the results received so far are written; run the same "
                               "command again to grade the rest")
        error = future.exception()
        if isinstance(error, KilledWorker):
            tries = error.allowed_failures + 1
            address = getattr(error.last_worker, "address", "?")
            return batch.course_problem_outcome(
                course, item, f"it was given up after {tries} tries: each time, the Dask worker grading it died "
                              f"(the last one was {address}; its log says why)")
        return batch.course_problem_outcome(course, item, f"the Dask task failed: {type(error).__name__}: {error}")


def _cancel(client, running: dict) -> None:
    """Cancel what is still queued or running (the scheduler forgets it; a grading under way ends on its worker)."""
    if not running:
        return
    try:
        client.cancel(list(running), force=True)
    except Exception:  # noqa: BLE001 - the scheduler may be gone: nothing left to cancel then
        pass
    running.clear()


def _item_fields(item: batch.BatchItem) -> dict:
    """The submission's names, as plain data (the worker needs them for its messages, never the paths' files)."""
    return {"student": item.student, "assignment": item.assignment, "notebook": str(item.notebook),
            "notes": list(item.notes), "problem": item.problem}


def refusal(answer: dict, parts: dict) -> dict | None:
    """Why a worker (as `describe_worker` described it) must not grade for a client whose course has `parts`."""
    from course.fingerprint import differences

    if answer.get("problem"):
        return answer
    differing = differences(parts, answer.get("parts") or {})
    if differing:
        return {**answer, "differences": differing}
    return None


def _refused_message(problems: list[dict], asked: int | None, graded: int) -> str:
    lines = []
    for problem in problems[:20]:
        where = f"worker {problem.get('worker', '?')} (host {problem.get('host', '?')}, course root " \
                f"{problem.get('root', '?')})"
        if problem.get("problem"):
            lines.append(f"  {where}: {problem['problem']}")
        else:
            theirs = problem.get("parts") or {}
            details = [f"{name} differs" + (f" ({theirs.get(name)!r} there)" if name in ("torch", "device",
                                                                                            "isolation") else "")
                       for name in problem["differences"]]
            lines.append(f"  {where}: {', '.join(details)}")
    if len(problems) > 20:
        lines.append(f"  ... and {len(problems) - 20} more")
    counted = f"{len(problems)} of {asked} workers" if asked is not None else "a worker"
    done = ("nothing was graded" if graded == 0 else
            f"the {graded} results received before were written and are kept; the rest was not graded")
    return (f"{counted} of the Dask cluster cannot grade as this machine does, so the run stopped ({done}):\n"
            + "\n".join(lines) + "\nEvery worker must have the same course as this machine (the same commit of "
            "graders/, reference/, course/, data/ and course.yml; the same torch, device and isolation). Update "
            "those workers (or stop them) and run the same command again (docs/cluster.md).")


# -- the worker's side -------------------------------------------------------------------------------------------

class _WorkerCourse:
    """This worker process's course: loaded once, with its parts per (device, isolation)."""

    def __init__(self):
        self.root: Path | None = None
        self.course: Course | None = None
        self.problem: str | None = None
        self.parts: dict[tuple, dict | str] = {}
        self.scratch: str | None = None
        self.copies = itertools.count()
        try:
            self.root = worker_course_root()
            self.course = load_course(self.root)
            self.root = self.course.root
        except CourseError as exc:
            self.problem = f"cannot load its course: {exc}"
        else:
            self.problem = _imported_elsewhere(self.course)

    def describe(self, assignment_id: str, device, isolation) -> dict:
        """Where this worker's course is, and its parts for grading `assignment_id` (or why it cannot grade)."""
        key = (assignment_id, device, isolation)
        with _WORKER_LOCK:
            if self.problem is None and key not in self.parts:
                self.parts[key] = self._parts(assignment_id, device, isolation)
        found = self.parts.get(key)
        answer = {"root": str(self.root), "host": socket.gethostname(), "pid": os.getpid()}
        if self.problem or isinstance(found, str):
            return {**answer, "problem": self.problem or found}
        return {**answer, "parts": found}

    def _parts(self, assignment_id: str, device, isolation) -> dict | str:
        from course.fingerprint import course_parts
        from course.grading.runner import worker_spec

        try:
            spec = worker_spec(self.course, self.course.assignment(assignment_id), device, isolation)
            return course_parts(self.course, spec.device, spec.sandbox.isolation)
        except (CourseError, KeyError) as exc:
            return (f"cannot grade {assignment_id} with device {device or 'as course.yml says'} and isolation "
                    f"{isolation or 'as course.yml says'}: {exc}")


_WORKER_COURSE: _WorkerCourse | None = None
_WORKER_LOCK = threading.RLock()
# Under Dask's own logger, so that it appears in the worker's log with Dask's messages.
logger = logging.getLogger("distributed.course")


def _worker_course() -> _WorkerCourse:
    global _WORKER_COURSE
    with _WORKER_LOCK:
        if _WORKER_COURSE is None:
            _WORKER_COURSE = _WorkerCourse()
        return _WORKER_COURSE


def dask_setup(worker) -> None:
    """`dask worker --preload course.cluster`: load the course and import the grading code (torch, pytest) while
    the worker starts, before it joins the scheduler, so that the first submission does not wait for them; the
    worker's log says which course it grades with."""
    import course.grading.runner  # noqa: F401 - imported now rather than by the first submission

    state = _worker_course()
    if state.problem:
        logger.warning("course: this worker %s", state.problem)
        return
    answer = state.describe(state.course.assignments[0].id, None, None)
    logger.info("course: grading with the course at %s (%s)", state.root,
                answer.get("problem") or ", ".join(f"{k} {str(v)[:12]}" for k, v in answer["parts"].items()))


def worker_course_root() -> Path:
    """The course this worker grades with: $COURSE_ROOT, else the checkout the `course` package comes from (an
    editable install), else the nearest folder holding course.yml at or above the working folder."""
    if os.environ.get(COURSE_ROOT_VARIABLE):
        return Path(os.environ[COURSE_ROOT_VARIABLE])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "course.yml").is_file():
        return checkout
    return find_course_root()


def _imported_elsewhere(course: Course) -> str | None:
    """The packages that grade (`course`, and `reference`, which the graders import) must be the course root's
    own files: the fingerprint digests the root's copies, so other code would grade without the client knowing."""
    from course.fingerprint import digest_files, folder_files

    for name in ("course", "reference"):
        spec = importlib.util.find_spec(name)
        folders = list(spec.submodule_search_locations or []) if spec else []
        if not folders:
            return f"cannot import the {name} package"
        imported = Path(folders[0]).resolve()
        own = (course.root / name).resolve()
        if imported != own and (digest_files(folder_files(imported), imported.parent)
                                != digest_files(folder_files(own), own.parent)):
            return (f"imports the {name} package from {imported}, whose files differ from its course root's "
                    f"{own}: install the course root there (pip install -e ROOT) or put it first on PYTHONPATH")
    return None


def _this_worker() -> tuple[str, int]:
    from distributed import get_worker

    worker = get_worker()
    return worker.address, worker.state.nthreads


async def describe_worker(assignment_id: str, device, isolation, dask_worker=None) -> dict:
    """`client.run`'s check of a worker, before anything is sent: its course's parts (or why it has none). Runs
    in a thread beside the worker's event loop (loading the course imports torch); starts no grading process."""
    answer = await asyncio.get_running_loop().run_in_executor(
        None, lambda: _worker_course().describe(assignment_id, device, isolation))
    answer["worker"] = dask_worker.address if dask_worker is not None else "?"
    if dask_worker is not None and dask_worker.state.nthreads != 1:
        answer["problem"] = _threads_problem(dask_worker.state.nthreads)
    return answer


def _threads_problem(threads: int) -> str:
    return (f"runs {threads} threads, and a grading process grades one submission at a time: start it with "
            "`dask worker ... --nthreads 1` (and --nworkers N for N grading processes on that machine)")


def grade_task(task: dict) -> dict:
    """The task: grade one submission with this worker's course, if its parts are the client's (`task["parts"]`).
    Returns {"outcome": what batch.grade_submission returns, "worker": address}, or {"refused": why}."""
    address, threads = _this_worker()
    worker = _worker_course()
    answer = worker.describe(task["item"]["assignment"], task["device"], task["isolation"])
    answer["worker"] = address
    if threads != 1:
        answer["problem"] = _threads_problem(threads)
    problem = refusal(answer, task["parts"])
    if problem:
        return {"refused": problem}
    fields = task["item"]
    item = batch.BatchItem(fields["student"], fields["assignment"], Path(fields["notebook"]), list(fields["notes"]),
                           fields["problem"])
    if worker.scratch is None:
        worker.scratch = _scratch_folder()
    scratch = os.path.join(worker.scratch, f"copy-{next(worker.copies)}")
    outcome = batch.grade_submission(worker.course, item, task["data"], task["device"], task["isolation"], scratch)
    return {"outcome": outcome, "worker": address}


def _scratch_folder() -> str:
    """Where this process's grading writes (the notebooks' copies, its template's folder): inside the Dask
    worker's own folder, which Dask removes when the worker closes and purges when a dead worker left it."""
    from distributed import get_worker

    base = Path(get_worker().local_directory) / "course-grading"
    base.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(base)  # the template launcher makes its folders with tempfile.mkdtemp()
    return tempfile.mkdtemp(prefix="copies-", dir=base)

