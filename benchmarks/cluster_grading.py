"""Grading a class of 40 on a local Dask cluster (a scheduler and two `dask worker --nthreads 1` processes on
127.0.0.1) against `course grade DIR --jobs 2`, on the same submissions, in one run; and the costs that decide
how a cluster scales (docs/cluster.md): the scheduler's overhead per task, what the client spends per result,
the size of a notebook in transit.

    python benchmarks/cluster_grading.py [--students 40] [--repeat 1] [--tasks 2000]

The class is class_grading.py's (tests/submissions/classroom.py: the solution, the untouched release, variants,
hostile submissions, unreadable notebooks, mutants of chapter 3). The cluster is started before the clock starts
(a cluster serves many runs), and its workers load the course when they start (`--preload course.cluster`), as
docs/cluster.md recommends; the first run on it is "cold" (each worker process then starts its template worker,
as each `--jobs` lane does), the next ones "warm". Each run is a fresh client process that does what `course grade
DIR --scheduler ADDRESS` does (discover, grade_batch with the cluster, grades.csv), timed from its start, as the
`--jobs 2` run is timed from the start of `course grade`. Both write grades.csv, and their scores are compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ASSIGNMENT = "ch03_attention"
# The course files a worker grades with; both ways grade from one copy of them, taken when the benchmark starts.
COURSE_FILES = ("course.yml", "pyproject.toml", "README.md", "graders", "reference", "course", "data", "solutions",
                "assignments", "checks")
HOSTILE = ("infinite_loop", "os_exit_in_function", "forged_reply_on_the_channel", "fork_bomb")  # class_grading.py's


def snapshot(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in COURSE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(REPO / name, target / name)
    return target


def client_run(root: str, scheduler_file: str, folder: str, out: str) -> None:
    """What `course --root ROOT grade FOLDER --scheduler SCHEDULER_FILE --out OUT` does (the flag is the CLI's),
    with the code of the course at ROOT, as the workers have."""
    sys.path.insert(0, root)
    from course import batch
    from course.cluster import dispatcher_for
    from course.config import load_course

    course = load_course(Path(root))
    found = batch.discover(course, Path(folder), ASSIGNMENT, exclude=(Path(out),))
    results = batch.grade_batch(course, found.items, out=Path(out), dispatcher=dispatcher_for(scheduler_file))
    batch.write_csv(Path(out) / "grades.csv", results)


class LocalCluster:
    """A scheduler and `workers` worker processes on 127.0.0.1, each in its own session, killed at the end."""

    def __init__(self, folder: Path, root: Path, workers: int):
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.group = CpuGroup.create("cluster")  # the scheduler, the workers and all they start
        env = dict(os.environ, COURSE_ROOT=str(root), PYTHONPATH=str(root),
                   DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0")
        self._start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--scheduler-file", str(self.scheduler_file), "--no-dashboard"], "scheduler", env)
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.processes[0].poll() is not None:
                raise RuntimeError("the scheduler did not start: see " + str(folder / "scheduler.log"))
            time.sleep(0.1)
        started = time.monotonic()
        for number in range(workers):
            self._start([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(self.scheduler_file),
                         "--host", "127.0.0.1", "--nthreads", "1", "--name", f"worker{number + 1}",
                         "--local-directory", str(folder / f"worker{number + 1}"), "--no-dashboard",
                         "--preload", "course.cluster"], f"worker{number + 1}", env)
        from distributed import Client

        self.client = Client(scheduler_file=str(self.scheduler_file), timeout=60, set_as_default=False)
        self.client.wait_for_workers(workers, timeout=300)
        self.startup = time.monotonic() - started

    def _start(self, command: list[str], name: str, env: dict) -> None:
        with open(self.folder / f"{name}.log", "wb") as log:
            # In the scratch folder: `python -m` puts the working folder first on the path, before PYTHONPATH.
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   cwd=self.folder, start_new_session=True,
                                                   preexec_fn=self.group.enter if self.group else None))

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001 - the processes go below whatever the client says
            pass
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        if self.group:
            self.group.remove()


class CpuGroup:
    """A control group that counts the CPU time of the processes put in it and of everything they start, the
    sandboxes included (a process's own accounting loses the children it never waited for, and the machine's
    counts other people's work). Made where this user may (root, cgroup v1's cpuacct or cgroup v2); else None,
    and the CPU columns say n/a."""

    def __init__(self, path: Path, usage):
        self.path = path
        self.usage = usage  # () -> CPU seconds of the group so far

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        name = f"course-benchmark-{os.getpid()}-{name}"
        v1, v2 = Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpuacct.usage").exists():
                (v1 / name).mkdir()
                return cls(v1 / name, lambda: int((v1 / name / "cpuacct.usage").read_text()) / 1e9)
            if (v2 / "cgroup.controllers").exists():
                (v2 / name).mkdir()

                def usage() -> float:
                    stat = dict(line.split() for line in (v2 / name / "cpu.stat").read_text().splitlines())
                    return int(stat["usage_usec"]) / 1e6

                return cls(v2 / name, usage)
        except OSError:
            return None
        return None

    def enter(self) -> None:
        """Move the calling process into the group (a child's pre-exec step)."""
        fd = os.open(self.path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def remove(self) -> None:
        for _ in range(50):  # the processes killed last may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def timed(how: str, command: list[str], rows: list, root: Path, cluster: LocalCluster | None = None) -> float:
    """Run a command; record its wall time and the CPU time it cost: its own processes' and, for a run on the
    cluster, the scheduler's and the workers' in the meantime (each counted in a control group)."""
    group = CpuGroup.create(f"run-{len(rows)}")
    cluster_group = cluster.group if cluster else None
    before = cluster_group.usage() if cluster_group else 0.0
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(root)), preexec_fn=group.enter if group else None)
        seconds = time.monotonic() - started
        cpu = None
        if group and (cluster_group or not cluster):
            cpu = group.usage() + (cluster_group.usage() - before if cluster_group else 0.0)
    finally:
        if group:
            group.remove()
    if done.returncode != 0:
        raise SystemExit(f"{how} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  {how}: {seconds:.1f} s" + (f", {cpu:.1f} CPU-s" if cpu is not None else ""), flush=True)
    rows.append((how, seconds, cpu))
    return seconds


def scores(out: Path) -> dict[str, tuple[str, str]]:
    with (out / "grades.csv").open(encoding="utf-8") as handle:
        return {row["student"]: (row["score"], row["status"]) for row in csv.DictReader(handle)}


def scheduler_overhead(client, tasks: int) -> float:
    """Seconds per task of the scheduler's own work: `tasks` tasks that do nothing, through the cluster."""
    from operator import add

    started = time.monotonic()
    futures = client.map(add, range(tasks), [1] * tasks, pure=False)
    client.gather(futures)
    seconds = time.monotonic() - started
    client.cancel(futures)
    return seconds / tasks


def client_cost(out: Path) -> float:
    """Seconds the client spends per result: decode the report and write its JSON (what grade_batch's `done` does
    in the client process), measured on this run's results."""
    from course.reporters.json_report import write_json
    from course.results import GradeReport

    files = sorted(out.glob(f"*/{ASSIGNMENT}.json"))
    copies = out.parent / "client-cost"
    started = time.monotonic()
    for number, path in enumerate(files):
        data = json.loads(path.read_text(encoding="utf-8"))
        write_json(GradeReport.from_dict(data), copies / f"{number}.json", extra={"course_fingerprint": {}})
    return (time.monotonic() - started) / max(len(files), 1)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        client_run(*sys.argv[2:])
        return
    sys.path.insert(0, str(REPO))
    from tests.submissions.classroom import make_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (interleaved) after the cold one")
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks for the scheduler's overhead")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="cluster-benchmark-") as scratch:
        folder = Path(scratch) / "class"
        root = snapshot(Path(scratch) / "course")
        make_class(folder, args.students, ASSIGNMENT, hostile=HOSTILE)
        sizes = [path.stat().st_size for path in (folder / "submitted").glob(f"*/{ASSIGNMENT}/*.ipynb")]
        print(f"Grading {args.students} submissions of {ASSIGNMENT}; each row is printed when it is done.", flush=True)
        cluster = LocalCluster(Path(scratch), root, workers=2)
        try:
            print(f"  (the cluster started in {cluster.startup:.1f} s: two workers that load the course)", flush=True)
            course = [sys.executable, "-m", "course", "--root", str(root), "grade", str(folder)]
            client = [sys.executable, str(Path(__file__).resolve()), "--client", str(root),
                      str(cluster.scheduler_file), str(folder)]
            local, cold, warm = [], [], []
            for run in range(args.repeat + 1):
                out = folder / f"jobs2-{run}"
                local.append(timed("`course grade DIR --jobs 2`", [*course, "--jobs", "2", "--out", str(out)], rows,
                                   root))
                how = "cluster of 2 workers, cold (first run on it)" if run == 0 else "cluster of 2 workers, warm"
                (cold if run == 0 else warm).append(timed(how, [*client, str(folder / f"cluster-{run}")], rows,
                                                          root, cluster))
            same = scores(folder / "jobs2-0") == scores(folder / "cluster-0")
            overhead = scheduler_overhead(cluster.client, args.tasks)
            per_result = client_cost(folder / "cluster-0")
            durations = [json.loads(p.read_text(encoding="utf-8")).get("duration") or 0.0
                         for p in (folder / "cluster-0").glob(f"*/{ASSIGNMENT}.json")]
        finally:
            cluster.close()
            shutil.rmtree(folder / "client-cost", ignore_errors=True)
    print(f"\nMeasured {date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}: {args.students} submissions of {ASSIGNMENT}; load average at the end "
          f"{os.getloadavg()[0]:.1f}.\n")
    print("| how | wall time (s) | per submission (s) | CPU time (s) | CPU per submission (s) |")
    print("|---|---|---|---|---|")
    for how, seconds, cpu in rows:
        cpus = f"{cpu:.1f} | {cpu / args.students:.2f}" if cpu is not None else "n/a | n/a"
        print(f"| {how} | {seconds:.1f} | {seconds / args.students:.2f} | {cpus} |")
    # Each cluster run against the `--jobs 2` run just before it (the machine's load drifts between runs).
    ratios = [seconds / jobs for jobs, seconds in zip(local, cold + warm)]
    cpu_local = [cpu for how, _, cpu in rows if how.startswith("`course") and cpu is not None]
    cpu_cluster = [cpu for how, _, cpu in rows if how.startswith("cluster") and cpu is not None]
    print(f"\ncluster / --jobs 2, each run against the one before it: cold {ratios[0]:.2f}x" +
          (f", warm {', '.join(f'{r:.2f}x' for r in ratios[1:])}" if warm else "")
          + (f"; CPU time, cluster / --jobs 2: {statistics.median(cpu_cluster) / statistics.median(cpu_local):.2f}x "
             "(medians)" if cpu_local and cpu_cluster else "")
          + f"; the same score and status for every student: {'yes' if same else 'NO'}")
    print(f"scheduler overhead: {overhead * 1000:.2f} ms per task ({args.tasks} no-op tasks on 2 workers); "
          f"client: {per_result * 1000:.2f} ms per result (decode and write its JSON); notebooks: mean "
          f"{statistics.mean(sizes) / 1024:.0f} KB, largest {max(sizes) / 1024:.0f} KB; grading only (the reports' "
          f"duration): median {statistics.median(durations):.2f} s, mean {statistics.mean(durations):.2f} s")


if __name__ == "__main__":
    main()
