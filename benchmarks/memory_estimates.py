"""Memory estimates of grouped-query attention and mixture-of-experts layers, next to the book's published figures.

    python benchmarks/memory_estimates.py

Computed with the reference's formulas (reference/gqa_moe.py: kv_cache_bytes, moe_parameters), for the
configurations of the book's ch04/04_gqa and ch04/07_moe READMEs; the book's figures are copied from those
READMEs. Nothing is run on a model: these are counts, the same on every machine.

A note on names: the book's memory_estimator_gqa.py takes --n_kv_groups as the number of query heads per
key/value head (32 heads, --n_kv_groups 4: 8 key/value heads), while its GroupedQueryAttention class (and the
course's assignment) take num_kv_groups as the number of key/value heads. The tables below give key/value heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.gqa_moe import kv_cache_bytes, moe_parameters  # noqa: E402


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"  # the book's READMEs use 10^9 bytes


def gpt_weights(emb_dim: int, n_heads: int, n_layers: int, kv_heads: int, context: int, vocab: int = 50257) -> int:
    """Parameters of the book's GPT with GQA (untied output head, out_proj without bias, GELU feed-forward)."""
    head_dim = emb_dim // n_heads
    attention = emb_dim * emb_dim + 2 * emb_dim * kv_heads * head_dim + emb_dim * emb_dim
    feed_forward = 2 * emb_dim * 4 * emb_dim + 4 * emb_dim + emb_dim
    norms = 4 * emb_dim
    return 2 * vocab * emb_dim + context * emb_dim + n_layers * (attention + feed_forward + norms) + 2 * emb_dim


def kv_table() -> None:
    print("== KV cache: multi-head attention vs grouped-query attention (bf16, batch 1) ==")
    llama = {"emb_dim": 4096, "n_heads": 32, "n_layers": 32, "context_length": 32768}
    mha, gqa = kv_cache_bytes(llama), kv_cache_bytes(llama, kv_heads=8)
    print("ch04/04_gqa README: emb_dim 4096, 32 heads, 32 layers, 32,768 tokens, 8 key/value heads")
    print(f"  MHA KV cache   course {gb(mha):>9}   book 17.18 GB")
    print(f"  GQA KV cache   course {gb(gqa):>9}   book  4.29 GB")
    print(f"  ratio          course {mha / gqa:>8.2f}x   book  4.00x")

    # The README's generation runs: emb_dim 768, 24 heads, 12 layers, 32,768 new tokens after a 4-token prompt,
    # GQA with 4 key/value heads; the book reports the whole run's peak GPU memory (weights, cache, activations).
    run = {"emb_dim": 768, "n_heads": 24, "n_layers": 12, "context_length": 32768 + 4}
    print("ch04/04_gqa README runs: emb_dim 768, 24 heads, 12 layers, 32,772 tokens, 4 key/value heads")
    for name, kv_heads, book in (("MHA", 24, "1.54 GB"), ("GQA", 4, "0.63 GB")):
        cache = kv_cache_bytes(run, kv_heads=kv_heads)
        weights = 2 * gpt_weights(768, 24, 12, kv_heads, run["context_length"])
        print(f"  {name} KV cache {gb(cache)} + weights {gb(weights)} = course {gb(cache + weights):>9}   "
              f"book (measured peak) {book}")

    gpt2 = {"emb_dim": 768, "n_heads": 12, "n_layers": 12, "context_length": 1024}
    print("GPT-2 small (the course's GPT_CONFIG_124M), 1,024 tokens, 4 key/value heads (no book figure)")
    print(f"  MHA KV cache   course {kv_cache_bytes(gpt2) / 1e6:>6.2f} MB")
    print(f"  GQA KV cache   course {kv_cache_bytes(gpt2, kv_heads=4) / 1e6:>6.2f} MB")


def moe_table() -> None:
    print("\n== Feed-forward parameters: dense SwiGLU vs mixture of experts (one layer) ==")
    emb_dim, dense_hidden, experts, top_k = 7168, 14336, 8, 2
    moe = moe_parameters(emb_dim, dense_hidden // experts, experts, top_k)
    dense = 3 * emb_dim * dense_hidden
    print("ch04/07_moe README: emb_dim 7168, dense hidden 14,336, 8 experts of hidden 1,792, 2 per token (bf16)")
    for label, value, book in (("dense FFN", dense, "308,281,344 (0.62 GB)"),
                               ("per expert", moe["expert"], " 38,535,168 (0.08 GB)"),
                               ("router", moe["router"], "     57,344 (0.00 GB)"),
                               ("MoE total", moe["total"], "308,338,688 (0.62 GB)"),
                               ("MoE active/token", moe["active"], " 77,127,680 (0.15 GB)")):
        print(f"  {label:17} course {value:>11,} ({gb(2 * value)})   book {book}")

    emb_dim, dense_hidden, experts, moe_hidden, top_k = 4096, 32768, 32, 1024, 2
    moe = moe_parameters(emb_dim, moe_hidden, experts, top_k)
    dense = 3 * emb_dim * dense_hidden
    print("ch04/07_moe README runs: emb_dim 4096, dense hidden 32,768 vs 32 experts of 1,024, 2 per token")
    print(f"  dense FFN        course {dense:>11,}")
    print(f"  MoE total        course {moe['total']:>11,}")
    print(f"  MoE active/token course {moe['active']:>11,} ({dense / moe['active']:.1f}x fewer than dense)")
    print("  book (measured, per feed-forward call): dense 0.19 MB of activations, MoE 0.04 MB; 0.76 vs 1.56 ms")


if __name__ == "__main__":
    kv_table()
    moe_table()
