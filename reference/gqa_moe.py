"""Chapter 4 bonus: grouped-query attention (GQA) and a mixture-of-experts (MoE) feed-forward.

Two changes that today's open models (Llama 3, Qwen3, Mixtral, DeepSeek) make to the GPT of chapter 4, in the
book's bonus material ch04/04_gqa (``gpt_with_kv_gqa.py``) and ch04/07_moe (``gpt_with_kv_moe.py``):

- :class:`GroupedQueryAttention`: the ``num_heads`` query heads share ``num_kv_groups`` key/value heads
  (``group_size = num_heads // num_kv_groups`` query heads per group). W_key and W_value project to
  ``num_kv_groups * head_dim`` features instead of ``d_out``, so the KV cache (and those two weights) shrink by
  ``num_heads / num_kv_groups``. With ``num_kv_groups == num_heads`` it is multi-head attention; with one
  group, multi-query attention. The book's class builds its causal mask on the fly (no ``context_length``)
  and keeps the cache with ``num_kv_groups`` heads: the keys are repeated for the query heads only when used.
- :class:`MoEFeedForward`: a router (``gate``) scores the ``num_experts`` experts for every token; each token
  goes to its ``num_experts_per_tok`` best experts, whose outputs are added up, weighted by the softmax of
  those top-k scores. Every expert is a SiLU-gated feed-forward (SwiGLU: ``fc3(silu(fc1(x)) * fc2(x))``).
  The book's code computes no per-expert load figure; :func:`routing_weights` gives the routing itself.
- :class:`TransformerBlock` and :class:`GPTModel`: chapter 4's GPT with the KV cache of ch04/03_kv-cache,
  GQA in every block, and the MoE feed-forward when ``cfg["num_experts"] > 0`` (chapter 4's dense
  :class:`reference.gpt.FeedForward` otherwise).

The configuration adds to GPT-2's: ``n_kv_groups``, ``num_experts``, ``num_experts_per_tok`` and
``hidden_dim`` (each expert's hidden width).
"""

from __future__ import annotations

import torch
from torch import nn

from reference.gpt import FeedForward, LayerNorm

__all__ = ["GroupedQueryAttention", "MoEFeedForward", "TransformerBlock", "GPTModel", "routing_weights",
           "kv_cache_bytes", "moe_parameters"]


class GroupedQueryAttention(nn.Module):
    """Causal attention whose query heads share key/value heads in ``num_kv_groups`` groups, with a KV cache.

    Query head ``h`` uses key/value head ``h // group_size``: heads 0 and 1 share group 0 when
    ``group_size`` is 2 (the book's ``repeat_interleave``; ``repeat`` would pair head 0 with group 0, head 1
    with group 1, ... and break the grouping a pretrained checkpoint was trained with).
    """

    def __init__(self, d_in: int, d_out: int, dropout: float, num_heads: int, num_kv_groups: int,
                 dtype: torch.dtype | None = None, qkv_bias: bool = False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        assert num_heads % num_kv_groups == 0, "num_heads must be divisible by num_kv_groups"

        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups  # query heads per key/value head

        # Keys and values: one head per group, so num_kv_groups * head_dim features (fewer than d_out).
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)
        self.dropout = nn.Dropout(dropout)

        # The cache holds the keys and values of num_kv_groups heads: the memory GQA saves.
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)
        self.ptr_current_pos = 0

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        b, num_tokens, _ = x.shape  # (b, num_tokens, d_in)

        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys_new = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        values_new = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        # queries: (b, num_heads, num_tokens, head_dim); keys_new, values_new: (b, num_kv_groups, num_tokens, head_dim)

        if use_cache:
            if self.cache_k is None:
                self.cache_k, self.cache_v = keys_new, values_new
            else:  # along the token dimension (dim 2 in this layout)
                self.cache_k = torch.cat([self.cache_k, keys_new], dim=2)
                self.cache_v = torch.cat([self.cache_v, values_new], dim=2)
            keys, values = self.cache_k, self.cache_v  # (b, num_kv_groups, num_tokens_K, head_dim)
            start = self.ptr_current_pos  # the position of the first new token
            self.ptr_current_pos += num_tokens
        else:
            keys, values = keys_new, values_new
            start = 0

        # Each key/value head serves group_size consecutive query heads: [K0, K1] -> [K0, K0, K1, K1].
        keys = keys.repeat_interleave(self.group_size, dim=1)  # (b, num_heads, num_tokens_K, head_dim)
        values = values.repeat_interleave(self.group_size, dim=1)  # (b, num_heads, num_tokens_K, head_dim)

        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens_K)

        # Causal mask: query i sits at position start + i and may look at keys 0 .. start + i.
        q_positions = torch.arange(start, start + num_tokens, device=x.device)
        k_positions = torch.arange(keys.shape[2], device=x.device)
        mask = q_positions.unsqueeze(1) < k_positions.unsqueeze(0)  # (num_tokens, num_tokens_K)
        attn_scores = attn_scores.masked_fill(mask, -torch.inf)

        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)  # (b, num_tokens, num_heads, head_dim)
        context_vec = context_vec.reshape(b, num_tokens, self.d_out)  # (b, num_tokens, d_out)
        return self.out_proj(context_vec)

    def reset_cache(self) -> None:
        """Forget the cached keys and values; the next cached call starts at position 0."""
        self.cache_k, self.cache_v = None, None
        self.ptr_current_pos = 0


def routing_weights(scores: torch.Tensor, num_experts_per_tok: int) -> torch.Tensor:
    """The router's decision as a dense table: (..., num_experts) -> (..., num_experts).

    Each token's ``num_experts_per_tok`` largest scores get the softmax of those k scores (they sum to 1);
    every other expert gets 0. This is what :class:`MoEFeedForward` multiplies the experts' outputs by.
    """
    topk_scores, topk_indices = torch.topk(scores, num_experts_per_tok, dim=-1)  # (..., k) each
    topk_probs = torch.softmax(topk_scores, dim=-1)  # renormalised over the k chosen experts
    return torch.zeros_like(scores).scatter(-1, topk_indices, topk_probs)  # (..., num_experts)


class MoEFeedForward(nn.Module):
    """A sparse feed-forward layer: each token runs through ``num_experts_per_tok`` of ``num_experts`` experts.

    Expert ``e`` is a SwiGLU feed-forward: ``fc3[e](silu(fc1[e](x)) * fc2[e](x))`` (fc1 the gate projection,
    fc2 the up projection, fc3 the down projection; no biases). Only the chosen experts run on a token, so a
    token costs ``num_experts_per_tok`` experts however many there are.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.num_experts_per_tok = cfg["num_experts_per_tok"]
        self.num_experts = cfg["num_experts"]
        self.emb_dim = cfg["emb_dim"]

        self.gate = nn.Linear(cfg["emb_dim"], cfg["num_experts"], bias=False)  # the router
        self.fc1 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc2 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc3 = nn.ModuleList([nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)
                                  for _ in range(self.num_experts)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape  # (batch, seq_len, emb_dim)
        scores = self.gate(x)  # (batch, seq_len, num_experts)
        topk_scores, topk_indices = torch.topk(scores, self.num_experts_per_tok, dim=-1)  # (batch, seq_len, k)
        topk_probs = torch.softmax(topk_scores, dim=-1)  # the k weights of each token sum to 1

        x_flat = x.reshape(batch * seq_len, -1)  # (tokens, emb_dim)
        indices_flat = topk_indices.reshape(-1, self.num_experts_per_tok)  # (tokens, k)
        probs_flat = topk_probs.reshape(-1, self.num_experts_per_tok)  # (tokens, k)
        out_flat = torch.zeros_like(x_flat)  # (tokens, emb_dim)

        for expert_id in torch.unique(indices_flat).tolist():  # only the experts some token chose
            chosen = indices_flat == expert_id  # (tokens, k): where this expert is among a token's k
            token_idx = chosen.any(dim=-1).nonzero().squeeze(-1)  # (n,) the tokens routed to it
            expert_in = x_flat[token_idx]  # (n, emb_dim)
            hidden = nn.functional.silu(self.fc1[expert_id](expert_in)) * self.fc2[expert_id](expert_in)
            expert_out = self.fc3[expert_id](hidden)  # (n, emb_dim)
            weight = (probs_flat[token_idx] * chosen[token_idx]).sum(dim=-1, keepdim=True)  # (n, 1)
            out_flat.index_add_(0, token_idx, expert_out * weight)

        return out_flat.reshape(batch, seq_len, self.emb_dim)


class TransformerBlock(nn.Module):
    """Chapter 4's pre-LayerNorm block with grouped-query attention, and the MoE feed-forward when the
    configuration has experts; ``forward(x, use_cache=False)``."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = GroupedQueryAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            num_kv_groups=cfg["n_kv_groups"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = MoEFeedForward(cfg) if cfg["num_experts"] > 0 else FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        shortcut = x  # (batch, num_tokens, emb_dim)
        x = self.att(self.norm1(x), use_cache=use_cache)
        x = self.drop_shortcut(x) + shortcut

        shortcut = x
        x = self.ff(self.norm2(x))  # (batch, num_tokens, emb_dim)
        return self.drop_shortcut(x) + shortcut


class GPTModel(nn.Module):
    """The KV-cache GPT of :mod:`reference.kv_cache` built from the blocks above:
    ``forward(in_idx, use_cache=False)``, ``reset_kv_cache()``."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.current_pos = 0  # the number of tokens in the cache: where the next positions start

        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        _, seq_len = in_idx.shape  # (batch, num_tokens)
        start = self.current_pos if use_cache else 0
        pos_ids = torch.arange(start, start + seq_len, device=in_idx.device)  # (num_tokens,)
        if use_cache:
            self.current_pos += seq_len
        x = self.tok_emb(in_idx) + self.pos_emb(pos_ids)  # (batch, num_tokens, emb_dim)
        x = self.drop_emb(x)
        for blk in self.trf_blocks:
            x = blk(x, use_cache=use_cache)
        return self.out_head(self.final_norm(x))  # (batch, num_tokens, vocab_size)

    def reset_kv_cache(self) -> None:
        """Empty every block's cache and start positions at 0 again: call it before each new prompt."""
        for blk in self.trf_blocks:
            blk.att.reset_cache()
        self.current_pos = 0


def kv_cache_bytes(cfg: dict, *, batch_size: int = 1, seq_len: int | None = None, bytes_per_elem: int = 2,
                   kv_heads: int | None = None) -> int:
    """The KV cache's size over all layers, as the book's ch04/04_gqa README computes it:
    batch_size * seq_len * head_dim * n_layers * 2 (keys and values) * bytes_per_elem * kv_heads.

    ``kv_heads``: ``cfg["n_heads"]`` for multi-head attention (the default), ``cfg["n_kv_groups"]`` for GQA.
    """
    head_dim = cfg["emb_dim"] // cfg["n_heads"]
    seq_len = cfg["context_length"] if seq_len is None else seq_len
    kv_heads = cfg["n_heads"] if kv_heads is None else kv_heads
    return batch_size * seq_len * head_dim * cfg["n_layers"] * 2 * bytes_per_elem * kv_heads


def moe_parameters(emb_dim: int, hidden_dim: int, num_experts: int, num_experts_per_tok: int) -> dict[str, int]:
    """Parameter counts of one SwiGLU MoE layer (no biases), as the book's ch04/07_moe README counts them.

    Returns ``expert`` (one expert: three emb_dim x hidden_dim matrices), ``router`` (emb_dim x num_experts),
    ``total`` (all experts and the router: what memory holds) and ``active`` (the router and the
    ``num_experts_per_tok`` experts a token runs through: what one token computes with).
    """
    expert = 3 * emb_dim * hidden_dim  # fc1, fc2 (emb_dim -> hidden_dim) and fc3 (hidden_dim -> emb_dim)
    router = emb_dim * num_experts
    return {"expert": expert, "router": router, "total": num_experts * expert + router,
            "active": num_experts_per_tok * expert + router}
