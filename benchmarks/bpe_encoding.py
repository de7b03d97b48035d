"""Encoding throughput of reference/bpe.py with GPT-2's files, against tiktoken (compiled Rust).

Both encode the same texts with GPT-2's vocabulary and must return the same ids (checked): a corpus of at
least 1 MB (``make_corpus`` of ``bpe_training.py``: the committed test text, repeated with variations, so
many pre-tokens repeat) and the committed 60 KB test text itself (varied, little repetition). Each run
encodes the whole text once, single-threaded (tiktoken's ``encode``, not its batch API); ours is timed
with an empty pre-token cache ("cold") and again with the cache filled by the previous run ("warm").

    python benchmarks/bpe_encoding.py [--size-mb 1] [--repeat 5] [--markdown]

Results, with the machine and the date, are kept in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bpe_training import make_corpus  # noqa: E402

from reference.bpe import BPETokenizerSimple  # noqa: E402
from reference.tiktoken_offline import get_gpt2_tokenizer, packaged_bpe_file  # noqa: E402


def timed(function, text: str) -> tuple[float, list[int]]:
    started = time.perf_counter()
    ids = function(text)
    return time.perf_counter() - started, ids


def measure(text: str, ours: BPETokenizerSimple, tiktoken_gpt2, repeat: int) -> tuple[dict, int]:
    """Median-ready times of each encoder on ``text``, and the number of tokens."""
    times = {"tiktoken": [], "reference, cold cache": [], "reference, warm cache": []}
    expected = None
    for _ in range(repeat):
        elapsed, expected = timed(tiktoken_gpt2.encode, text)
        times["tiktoken"].append(elapsed)
        ours._cache.clear()
        for label in ("reference, cold cache", "reference, warm cache"):
            elapsed, ids = timed(ours.encode, text)
            if ids != expected:
                raise SystemExit(f"{label}: the reference's ids differ from tiktoken's")
            times[label].append(elapsed)
    return times, len(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1.0, help="text size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()

    with open(REPO / "data" / "bpe" / "mixed_text.txt", encoding="utf-8", newline="") as file:
        test_text = file.read().replace("<|endoftext|>", "")
    texts = {
        f"{args.size_mb:g} MB corpus (repetitive)": make_corpus(int(args.size_mb * 1_000_000)),
        "the 60 KB test text (little repetition)": test_text,
    }
    ours = BPETokenizerSimple()
    ours.load_vocab_and_merges_from_openai(packaged_bpe_file("encoder.json"), packaged_bpe_file("vocab.bpe"))
    tiktoken_gpt2 = get_gpt2_tokenizer()

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"{args.repeat} runs each; {machine}; {date.today().isoformat()}\n")
    if args.markdown:
        print("| text | encoder | median (s) | MB/s | tokens/s | time vs tiktoken |")
        print("|---|---|---|---|---|---|")
    for name, text in texts.items():
        size_mb = len(text.encode("utf-8")) / 1e6
        times, num_tokens = measure(text, ours, tiktoken_gpt2, args.repeat)
        base = statistics.median(times["tiktoken"])
        if not args.markdown:
            print(f"{name}: {size_mb:.2f} MB, {num_tokens:,} tokens")
        for label, values in times.items():
            median = statistics.median(values)
            if args.markdown:
                print(f"| {name} | {label} | {median:.3f} | {size_mb / median:.2f} | {num_tokens / median:,.0f} | "
                      f"{median / base:.1f}x |")
            else:
                print(f"  {label:22} median {median:7.3f} s  {size_mb / median:7.2f} MB/s  "
                      f"{num_tokens / median:>12,.0f} tokens/s  {median / base:6.1f}x tiktoken's time")


if __name__ == "__main__":
    main()
