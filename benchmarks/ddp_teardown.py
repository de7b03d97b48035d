"""Appendix A's DDP teardown under stress: does main(0, 1, 3) in a process group of one ever hang?

With PyTorch 2.13, the book's order of teardown (destroy_process_group(), then the DDP wrapper freed as main
returns) can deadlock: see "Teardown" in reference/ddp.py. This script runs main many times in a fresh process
per case and reports, per case, how many runs finished and whether one hung (no run may take longer than
--deadline seconds; the process then prints its threads' stacks and stops).

Cases:

- ``book-order``: the solution's main without its ``model = None`` line, called directly. Expected to hang
  sooner or later: this case shows the PyTorch bug, and that the stress finds it.
- ``check``: the same book-order main through the public check ``check("test_ddp_training")``, which must
  never hang (the check holds the process group until the wrapper is gone).
- ``solution``: the solution notebook's main, called directly.
- ``reference``: ``reference.ddp.main``, called directly.

The race is short: a gloo thread must still be freeing the last all-reduce when the group is destroyed.
A longer GIL switch interval (``sys.setswitchinterval``, Python's default 0.005 s) makes that thread wait
longer for the GIL, which widens the window: on 2 cores at 0.05 s, the book-order case hung in run 4, 7, 36
and 83 of four tries (a fifth passed its 30 runs); at the default, after tens to hundreds of runs. ``--load``
adds one CPU-bound process per core. When a new PyTorch no longer hangs in the book-order case, the
workaround (``model = None`` in main, the check's and the grader's hold on the group) can go.

    python benchmarks/ddp_teardown.py --runs 50 --switch-interval 0.05
    python benchmarks/ddp_teardown.py --cases check solution --runs 200 --switch-interval 0 --load
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "solutions" / "appa_pytorch" / "appa_pytorch.ipynb"
CASES = ["book-order", "check", "solution", "reference"]
SAFE_LINE = "        model = None  # first free the DDP wrapper"


def notebook_namespace(book_order: bool) -> dict:
    """The solution notebook's setup and solution cells, executed; with book_order, main without `model = None`."""
    namespace: dict = {"__name__": "__main__"}
    for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if cell["cell_type"] != "code" or not meta or meta["grade"] or meta["grade_id"] == "import_checks":
            continue
        source = "".join(cell["source"])
        if book_order and meta["grade_id"] == "main":
            kept = [line for line in source.splitlines() if not line.startswith(SAFE_LINE)]
            if len(kept) != len(source.splitlines()) - 1:
                raise SystemExit(f"the solution's main has no line starting with {SAFE_LINE.strip()!r}")
            source = "\n".join(kept)
        exec(compile(source, f"<{NOTEBOOK.name} {meta['grade_id']}>", "exec"), namespace)
    return namespace


def run_case(case: str, runs: int, deadline: float) -> None:
    """In this process: run `case` `runs` times; a run that takes longer than `deadline` ends the process."""
    import contextlib
    import faulthandler
    import io
    import random

    sys.path.insert(0, str(REPO))
    if case == "reference":
        import reference.ddp

        main = reference.ddp.main
    else:
        namespace = notebook_namespace(book_order=case in ("book-order", "check"))
        main = namespace["main"]
    if case == "check":
        from checks.appa_pytorch import CHECKS

    started = time.monotonic()
    for run in range(runs):
        print(f"run {run + 1}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(deadline, exit=True)
        if case == "check":
            outcome = CHECKS.run("test_ddp_training", namespace)
            if outcome["status"] != "passed":
                raise SystemExit(f"the check did not pass: {outcome}")
        else:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(random.randint(20000, 32000))
            with contextlib.redirect_stdout(io.StringIO()):
                main(0, 1, 3)
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"runs": runs, "seconds": round(time.monotonic() - started, 1)}), flush=True)


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--runs", type=int, default=50, help="runs of main per case")
    parser.add_argument("--switch-interval", type=float, default=0.05,
                        help="sys.setswitchinterval in the process under test (0: Python's default)")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds a run may take before it counts as hung")
    parser.add_argument("--load", action="store_true", help="keep every core busy with a CPU-bound process meanwhile")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.child:
        if options.switch_interval > 0:
            sys.setswitchinterval(options.switch_interval)
        run_case(options.child, options.runs, options.deadline)
        return

    burners = []
    if options.load:
        burners = [multiprocessing.Process(target=burn, args=(24 * 3600,), daemon=True)
                   for _ in range(os.cpu_count() or 1)]
        for burner in burners:
            burner.start()
    print(f"{options.runs} runs per case, GIL switch interval {options.switch_interval or 'default'}, "
          f"deadline {options.deadline:g} s per run, load: {len(burners)} busy processes")
    try:
        for case in options.cases:
            command = [sys.executable, __file__, "--child", case, "--runs", str(options.runs),
                       "--switch-interval", str(options.switch_interval), "--deadline", str(options.deadline)]
            started = time.monotonic()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            elapsed = time.monotonic() - started
            last_run = [line for line in done.stderr.splitlines() if line.startswith("run ")][-1:]
            if done.returncode == 0:
                print(f"{case:>10}: {options.runs} runs, no hang ({elapsed:.1f} s)")
            elif "Timeout (" in done.stderr:
                print(f"{case:>10}: HUNG in {last_run[0] if last_run else 'run ?'} of {options.runs} "
                      f"(no progress for {options.deadline:g} s)")
            else:
                print(f"{case:>10}: failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
    finally:
        for burner in burners:
            burner.terminate()


if __name__ == "__main__":
    main()
