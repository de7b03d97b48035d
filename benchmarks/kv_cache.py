"""How much faster greedy generation is with the KV cache (reference/kv_cache.py) than without it.

For each model configuration it builds one seeded model, then generates ``--new-tokens`` tokens after the
4-token prompt "Hello, I am" (batch size 1, the book's benchmark), alternately with
``generate_text_simple_cached(..., use_cache=True)`` and with ``use_cache=False`` (the whole sequence at
every step, as chapter 4's ``generate_text_simple`` does), several times, and prints the median time,
the tokens per second and the speed-up. It also checks that both give the same tokens.

    python benchmarks/kv_cache.py [--repeat 5] [--new-tokens 200] [--threads N] [--gpt2-124m] [--markdown]

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

# name -> configuration overrides of GPT_CONFIG_124M (the context must hold the prompt and the new tokens)
CONFIGS = {
    "demo width: 2 layers, emb 64, ctx 256": {"context_length": 256, "emb_dim": 64, "n_heads": 4, "n_layers": 2},
    "small: 4 layers, emb 256, ctx 256": {"context_length": 256, "emb_dim": 256, "n_heads": 4, "n_layers": 4},
}
GPT2_124M = {"GPT-2 124M (ctx 1024)": {}}  # with --gpt2-124m: minutes per run on two cores


def time_generation(model, idx, new_tokens: int, use_cache: bool):
    from reference.kv_cache import generate_text_simple_cached

    started = time.perf_counter()
    out = generate_text_simple_cached(model, idx, new_tokens, use_cache=use_cache)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--gpt2-124m", action="store_true", help="also measure GPT_CONFIG_124M (slow)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    import torch

    from reference.gpt import GPT_CONFIG_124M
    from reference.kv_cache import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    idx = torch.tensor([get_gpt2_tokenizer().encode("Hello, I am")])  # (1, 4)

    rows = []
    configs = {**CONFIGS, **(GPT2_124M if args.gpt2_124m else {})}
    for name, overrides in configs.items():
        cfg = {**GPT_CONFIG_124M, **overrides}
        torch.manual_seed(123)
        model = GPTModel(cfg).eval()
        n_params = sum(p.numel() for p in model.parameters())
        time_generation(model, idx, 10, True)  # warm-up
        cached, uncached = [], []
        for _ in range(args.repeat):  # alternate, so that load changes hit both alike
            seconds, out_cached = time_generation(model, idx, args.new_tokens, True)
            cached.append(seconds)
            seconds, out_uncached = time_generation(model, idx, args.new_tokens, False)
            uncached.append(seconds)
        if not torch.equal(out_cached, out_uncached):
            raise SystemExit(f"{name}: the cached and uncached generations differ")
        t_cached, t_uncached = statistics.median(cached), statistics.median(uncached)
        rows.append((name, n_params, t_uncached, t_cached, args.new_tokens / t_uncached,
                     args.new_tokens / t_cached, t_uncached / t_cached))

    threads = torch.get_num_threads()
    load = os.getloadavg()[0]  # other processes on the machine slow both variants down
    if args.markdown:
        print(f"Measured {date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, {threads} torch "
              f"threads, Python {platform.python_version()}, torch {torch.__version__}; {args.new_tokens} new tokens "
              f"after a 4-token prompt, batch 1, median of {args.repeat} runs; load average {load:.1f} at the end.\n")
        print("| model | parameters | without cache (s) | with cache (s) | tokens/s without | tokens/s with "
              "| speed-up |")
        print("|---|---|---|---|---|---|---|")
        for name, n, tu, tc, su, sc, x in rows:
            print(f"| {name} | {n / 1e6:.1f} M | {tu:.2f} | {tc:.2f} | {su:.0f} | {sc:.0f} | {x:.1f}x |")
    else:
        for name, n, tu, tc, su, sc, x in rows:
            print(f"{name} ({n / 1e6:.1f} M parameters, {threads} threads): without cache {tu:.2f} s "
                  f"({su:.0f} tokens/s), with cache {tc:.2f} s ({sc:.0f} tokens/s): {x:.1f}x")


if __name__ == "__main__":
    main()
