#!/usr/bin/env bash
# The install steps of a grading worker (a `dask worker` that grades submissions: docs/cluster.md), in one
# script. The container recipe beside it runs it to build the image; the course's tests run it with --check
# (tests/test_cluster.py), which checks every step's preconditions and installs nothing. It also installs a
# worker on a plain Linux machine (a lab PC, a cluster's shared software folder) with --venv and --course.
#
#   install.sh [--check] [--course DIR] [--venv DIR] [--python PY] [--torch-index URL] [--user NAME]
#
#   --course DIR       the course repository, at the same commit as the instructor's (default /course)
#   --venv DIR         the virtual environment to make (default /opt/course-venv)
#   --python PY        the Python 3.11+ that makes it (default python3)
#   --torch-index URL  where torch comes from (default the CPU builds, https://download.pytorch.org/whl/cpu;
#                      e.g. https://download.pytorch.org/whl/cu128 for GPU workers)
#   --user NAME        the unprivileged user that runs the worker, made when this runs as root (default grader)
#   --check            check each step's preconditions (pip's part as a dry run against the packages that
#                      --python already has, without the network); change nothing
#
# The steps: 1 system packages (bubblewrap), 2 the user, 3 the virtual environment, 4 torch (the version
# pyproject.toml pins), 5 the course with its `cluster` extra (Dask), installed in place (pip install -e) so
# that the code that grades is the code the fingerprint digests, 6 the checks of what was installed.
set -euo pipefail

COURSE=/course
VENV=/opt/course-venv
PYTHON=python3
TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN_AS=grader
CHECK=0

while [ $# -gt 0 ]; do
  case "$1" in
    --course) COURSE=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --torch-index) TORCH_INDEX=$2; shift 2 ;;
    --user) RUN_AS=$2; shift 2 ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

ok() { echo "ok: $*"; }
fail() { echo "install.sh: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
checking() { [ "$CHECK" = 1 ]; }

# 1. bubblewrap: every submission is graded in its sandbox (course/worker/sandbox.py).
step_system() {
  if command -v bwrap >/dev/null; then
    ok "system packages (bubblewrap is installed: $(bwrap --version))"
    return
  fi
  if ! is_root || ! command -v apt-get >/dev/null; then
    fail "bubblewrap is not installed, and this is not root with apt-get to install it: install the package bubblewrap"
  fi
  if checking; then ok "system packages (bubblewrap would be installed with apt-get)"; return; fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bubblewrap
  rm -rf /var/lib/apt/lists/*
  ok "system packages (bubblewrap installed: $(bwrap --version))"
}

# 2. The worker does not run as root: bubblewrap needs no privilege, and RLIMIT_NPROC does not bind root.
step_user() {
  if ! is_root; then ok "user (this runs as $(id -un), not root)"; return; fi
  if id "$RUN_AS" >/dev/null 2>&1; then ok "user ($RUN_AS exists)"; return; fi
  command -v useradd >/dev/null || fail "useradd is missing: the user $RUN_AS cannot be made"
  if checking; then ok "user ($RUN_AS would be made)"; return; fi
  useradd --create-home --shell /usr/sbin/nologin "$RUN_AS"
  ok "user ($RUN_AS made)"
}

# 3. The virtual environment.
step_venv() {
  "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || fail "$PYTHON is not a Python 3.11 or later with the venv and ensurepip modules"
  if [ -e "$VENV" ] && [ ! -x "$VENV/bin/python" ]; then fail "$VENV exists and is not a virtual environment"; fi
  local existing=$VENV
  while [ ! -e "$existing" ]; do existing=$(dirname "$existing"); done
  [ -w "$existing" ] || fail "$existing is not writable: the virtual environment $VENV cannot be made"
  if checking; then ok "virtual environment ($VENV would be made with $("$PYTHON" --version))"; return; fi
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  ok "virtual environment ($VENV, $("$VENV/bin/python" --version))"
}

# 4. torch, the version pyproject.toml pins, from the index of the builds wanted (CPU by default: no CUDA
#    libraries, gigabytes smaller).
torch_pin() {
  sed -n 's/^[[:space:]]*"\(torch==[^"]*\)".*/\1/p' "$COURSE/pyproject.toml" | head -n 1
}

step_torch() {
  [ -f "$COURSE/pyproject.toml" ] || fail "$COURSE/pyproject.toml is missing: is $COURSE the course repository?"
  local pin
  pin=$(torch_pin)
  [ -n "$pin" ] || fail "$COURSE/pyproject.toml pins no torch version (a dependency \"torch==X\")"
  if checking; then ok "torch ($pin would be installed from $TORCH_INDEX)"; return; fi
  "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX" "$pin"
  ok "torch ($pin from $TORCH_INDEX)"
}

# 5. The course with its `cluster` extra (Dask's distributed scheduler), in place.
step_course() {
  [ -f "$COURSE/course.yml" ] || fail "$COURSE/course.yml is missing: is $COURSE the course repository?"
  grep -Eq '^[[:space:]]*cluster[[:space:]]*=' "$COURSE/pyproject.toml" \
    || fail "$COURSE/pyproject.toml declares no cluster extra ([project.optional-dependencies] cluster = [...])"
  if checking; then
    "$PYTHON" -m pip install --dry-run --no-index --no-build-isolation --quiet -e "$COURSE[cluster]" \
      || fail "pip cannot install $COURSE[cluster] with what $PYTHON has (its dry run failed: see above)"
    ok "the course ($COURSE[cluster] would be installed: pip's dry run resolves every requirement)"
    return
  fi
  "$VENV/bin/pip" install -q -e "$COURSE[cluster]"
  ok "the course ($COURSE[cluster], in place)"
}

# 6. What was installed works: Dask and the course's cluster module import, course.yml loads, and whether
#    bubblewrap can make its namespaces here (not during an image build, which forbids them: then a note).
step_checks() {
  local python="$VENV/bin/python"
  if checking; then python=$PYTHON; fi
  COURSE_ROOT=$COURSE "$python" - <<'EOF' || fail "the installed course does not load (see above)"
import os
from pathlib import Path

import distributed  # noqa: F401

import course.cluster  # noqa: F401
from course.config import load_course
from course.worker.sandbox import bubblewrap_problem

course = load_course(Path(os.environ["COURSE_ROOT"]))
print(f"   {course.title}: {len(course.assignments)} assignments; Dask {distributed.__version__}")
problem = bubblewrap_problem()
print(f"   bubblewrap: {'works here' if problem is None else 'not here (' + problem + '): see docs/cluster.md'}")
EOF
  if ! checking; then
    "$python" -m course --root "$COURSE" validate >/dev/null || fail "course validate fails in $COURSE"
  fi
  ok "checks"
}

step_system
step_user
step_venv
step_torch
step_course
step_checks
