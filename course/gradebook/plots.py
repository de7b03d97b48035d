"""A picture of the class: OUT/class-<assignment>.png, the score distribution beside each test's pass rate.

Drawn with matplotlib's Agg renderer (a Figure of its own, no pyplot and no display), from the numbers of
course/gradebook/figures.py, which are also written beside the picture as OUT/class-<assignment>.json: the
figure and the JSON hold the same numbers, and both come from the rows of grades.csv.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from course.gradebook.figures import Figures, bin_labels


def plot_paths(out: Path, assignment: str) -> tuple[Path, Path]:
    return out / f"class-{assignment}.png", out / f"class-{assignment}.json"


def write_plot(out: Path, fig: Figures) -> tuple[Path, Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    png, numbers = plot_paths(out, fig.assignment)
    height = max(3.5, 0.32 * len(fig.tests) + 1.5)
    figure = Figure(figsize=(12, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.3])
    labels = bin_labels()
    left.bar(range(len(fig.counts)), fig.counts, color="#4c72b0")
    left.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    left.set_xlabel(f"score, in percent of {fig.max_score:g} points")
    left.set_ylabel("students")
    mean = f"mean {fig.mean:.1f}, median {fig.median:g}" if fig.scores else "no grades"
    left.set_title(f"{fig.assignment}: {len(fig.scores)} grades ({mean})", fontsize=10)
    left.yaxis.get_major_locator().set_params(integer=True)
    names = [test.name for test in fig.tests]
    rates = [100 * test.rate for test in fig.tests]
    positions = list(range(len(names)))[::-1]
    right.barh(positions, rates, color="#55a868")
    right.set_yticks(positions, names, fontsize=8)
    right.set_xlim(0, 100)
    right.set_xlabel("students with the test's full points (%)")
    right.set_title("pass rate per test", fontsize=10)
    for position, test in zip(positions, fig.tests):
        right.text(min(100 * test.rate + 1, 88), position, f"{test.full}/{test.graded}", va="center", fontsize=7)
    out.mkdir(parents=True, exist_ok=True)
    temporary = png.with_name(f".{png.name}.tmp")
    figure.savefig(temporary, format="png")
    os.replace(temporary, png)
    temporary = numbers.with_name(f".{numbers.name}.tmp")
    temporary.write_text(json.dumps(fig.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, numbers)
    return png, numbers
