"""How long BPE training takes: incremental pair counts (reference/bpe.py) against recounting every pair.

The corpus (at least 1 MB) is built from the committed test text ``data/bpe/mixed_text.txt``: its lines,
shuffled and varied (digits redrawn, some words upper- or title-cased) in each repetition, with a seed.
Three trainers learn the same number of merges from it and must learn the same merges (checked):

- ``incremental``: ``BPETokenizerSimple.train``: distinct pre-tokens with counts, pair counts updated
  only where a merge happened, a heap for the most frequent pair;
- ``recount (distinct)``: the same distinct pre-tokens with counts, but all pairs recounted after every
  merge;
- ``recount (every pre-token)``: the simplest way, as the book's class does it: the list of all
  pre-tokens in text order, all pairs recounted and every pre-token rewritten after every merge.

Ties go to the pair that occurs first in the text in all three, so they agree exactly.

    python benchmarks/bpe_training.py [--merges 300] [--size-mb 1] [--repeat 3] [--skip-slowest] [--markdown]

Results, with the machine and the date, are kept in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reference.bpe import BPETokenizerSimple, _merge_tokens, pretokenize  # noqa: E402

EOT = "<|endoftext|>"


def make_corpus(min_bytes: int, seed: int = 0) -> str:
    """The committed test text, repeated with variations until it has ``min_bytes`` bytes of UTF-8.

    Special tokens are removed (training cuts them out anyway), so every trainer sees the same text.
    """
    with open(REPO / "data" / "bpe" / "mixed_text.txt", encoding="utf-8", newline="") as file:
        lines = file.read().replace(EOT, "").split("\n")
    rng = random.Random(seed)
    parts, size = [], 0
    while size < min_bytes:
        shuffled = lines[:]
        rng.shuffle(shuffled)
        for line in shuffled:
            if rng.random() < 0.3:
                line = re.sub(r"\d", lambda _: str(rng.randrange(10)), line)
            if rng.random() < 0.1:
                line = line.upper() if rng.random() < 0.5 else line.title()
            parts.append(line)
            size += len(line.encode("utf-8")) + 1
    return "\n".join(parts)


def train_incremental(text: str, num_merges: int) -> list[tuple[int, int]]:
    tokenizer = BPETokenizerSimple()
    tokenizer.train(text, vocab_size=256 + num_merges, allowed_special=())
    return list(tokenizer.bpe_merges)


def train_recount_distinct(text: str, num_merges: int) -> list[tuple[int, int]]:
    """Distinct pre-tokens with their counts; every pair recounted after each merge."""
    counts = Counter(pretokenize(text))
    words = [list(pretoken.encode("utf-8")) for pretoken in counts]
    freqs = list(counts.values())
    merges = []
    for step in range(num_merges):
        pair_counts: Counter = Counter()
        for tokens, freq in zip(words, freqs):
            for pair in zip(tokens, tokens[1:]):
                pair_counts[pair] += freq
        if not pair_counts:
            break
        pair = max(pair_counts.items(), key=lambda item: item[1])[0]
        merges.append(pair)
        words = [_merge_tokens(tokens, pair, 256 + step) if len(tokens) > 1 else tokens for tokens in words]
    return merges


def train_recount_every_pretoken(text: str, num_merges: int) -> list[tuple[int, int]]:
    """Every pre-token occurrence, in text order; every pair recounted after each merge (the book's way)."""
    sequences = [list(pretoken.encode("utf-8")) for pretoken in pretokenize(text)]
    merges = []
    for step in range(num_merges):
        pair_counts = Counter(pair for tokens in sequences for pair in zip(tokens, tokens[1:]))
        if not pair_counts:
            break
        pair = max(pair_counts.items(), key=lambda item: item[1])[0]
        merges.append(pair)
        sequences = [_merge_tokens(tokens, pair, 256 + step) for tokens in sequences]
    return merges


TRAINERS = {
    "incremental": train_incremental,
    "recount (distinct)": train_recount_distinct,
    "recount (every pre-token)": train_recount_every_pretoken,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=300, help="number of merges to learn")
    parser.add_argument("--size-mb", type=float, default=1.0, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fast trainer (the slowest runs once)")
    parser.add_argument("--skip-slowest", action="store_true", help="skip 'recount (every pre-token)'")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()

    text = make_corpus(int(args.size_mb * 1_000_000))
    size = len(text.encode("utf-8"))
    distinct = len(set(pretokenize(text)))
    results, reference_merges = {}, None
    for name, trainer in TRAINERS.items():
        if args.skip_slowest and name == "recount (every pre-token)":
            continue
        times = []
        for _ in range(1 if name == "recount (every pre-token)" else args.repeat):
            started = time.perf_counter()
            merges = trainer(text, args.merges)
            times.append(time.perf_counter() - started)
        if reference_merges is None:
            reference_merges = merges
        elif merges != reference_merges:
            raise SystemExit(f"{name} learned different merges from the incremental trainer")
        results[name] = times

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    base = statistics.median(results["incremental"])
    header = (f"{size:,} bytes, {len(pretokenize(text)):,} pre-tokens ({distinct:,} distinct), "
              f"{args.merges} merges; {machine}; {date.today().isoformat()}")
    if args.markdown:
        print(header + "\n")
        print("| trainer | runs | median (s) | min-max (s) | vs incremental |")
        print("|---|---|---|---|---|")
        for name, times in results.items():
            median = statistics.median(times)
            spread = f"{min(times):.2f}-{max(times):.2f}"
            print(f"| {name} | {len(times)} | {median:.2f} | {spread} | {median / base:.1f}x |")
    else:
        print(header)
        for name, times in results.items():
            median = statistics.median(times)
            print(f"{name:26} median {median:8.2f} s  (min {min(times):.2f}, max {max(times):.2f})  "
                  f"{median / base:6.1f}x the incremental time")


if __name__ == "__main__":
    main()
