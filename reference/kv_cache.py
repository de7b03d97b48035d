"""Chapter 4 bonus: a KV cache for faster generation.

When :func:`reference.gpt.generate_text_simple` appends a token, it runs the model on the whole sequence
again, although the keys and values of the earlier tokens have not changed: a token's key and value depend
only on the tokens up to it. A KV cache keeps them. The prompt is run once (the "prefill"); after that the
model sees only the newest token, computes its query, key and value, appends the key and value to the
cache, and attends over the whole cache. Each step then costs one token instead of the whole sequence.

The classes here are the book's ``gpt_with_kv_cache.py`` versions, with the same names as in
:mod:`reference.gpt`:

- :class:`MultiHeadAttention`: ``forward(x, use_cache=False)``, ``reset_cache()``; the cache is two
  non-persistent buffers, ``cache_k`` and ``cache_v``, so it never enters the ``state_dict``.
- :class:`TransformerBlock`: passes ``use_cache`` to its attention.
- :class:`GPTModel`: ``forward(in_idx, use_cache=False)``, ``reset_kv_cache()``; with the cache, position
  ids continue from ``current_pos`` instead of starting at 0.
- :func:`generate_text_simple_cached`: greedy generation with (or without) the cache.

The parameters, buffers and construction order are those of :class:`reference.gpt.GPTModel`, so the two
load each other's ``state_dict`` (strictly), and the same seed builds the same weights: a model trained
with :mod:`reference.pretraining` can generate with the cache. The cache is for inference only; training
runs ``forward`` without it.

The cache lives in the model, so it must be cleared between prompts (:meth:`GPTModel.reset_kv_cache`;
:func:`generate_text_simple_cached` does it at the start of every call). All rows of a batch share one
position counter: the batch's prompts have the same length, as in :func:`reference.gpt.generate_text_simple`.
"""

from __future__ import annotations

import torch
from torch import nn

from reference import attention
from reference.gpt import FeedForward, LayerNorm

__all__ = ["MultiHeadAttention", "TransformerBlock", "GPTModel", "generate_text_simple_cached"]


class MultiHeadAttention(attention.MultiHeadAttention):
    """Chapter 3's multi-head attention, plus a cache of the keys and values seen so far.

    ``forward(x, use_cache=True)`` treats ``x`` as the next ``num_tokens`` tokens of the sequence: their
    keys and values are appended to the cache and their queries attend over everything cached. The causal
    mask is cut at the queries' true positions (``ptr_current_pos`` onwards), so that a prompt fed in one
    piece still cannot look ahead. ``use_cache=False`` is exactly chapter 3's attention.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        # The parent builds W_query, W_key, W_value, out_proj, dropout and the mask, in that order.
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        # Buffers move with the module to a device; non-persistent ones stay out of the state_dict.
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)
        self.ptr_current_pos = 0  # the position of the next token the cache will receive

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        b, num_tokens, d_in = x.shape  # (b, num_tokens, d_in)

        keys_new = self.W_key(x)  # (b, num_tokens, d_out)
        values_new = self.W_value(x)  # (b, num_tokens, d_out)
        queries = self.W_query(x)  # (b, num_tokens, d_out)

        keys_new = keys_new.view(b, num_tokens, self.num_heads, self.head_dim)
        values_new = values_new.view(b, num_tokens, self.num_heads, self.head_dim)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim)
        # keys_new, values_new, queries: (b, num_tokens, num_heads, head_dim)

        if use_cache:
            if self.cache_k is None:
                self.cache_k, self.cache_v = keys_new, values_new
            else:
                # Along the token dimension: the cache grows by num_tokens.
                self.cache_k = torch.cat([self.cache_k, keys_new], dim=1)  # (b, num_cached, num_heads, head_dim)
                self.cache_v = torch.cat([self.cache_v, values_new], dim=1)  # (b, num_cached, num_heads, head_dim)
            keys, values = self.cache_k, self.cache_v
        else:
            keys, values = keys_new, values_new

        keys = keys.transpose(1, 2)  # (b, num_heads, num_tokens_K, head_dim)
        queries = queries.transpose(1, 2)  # (b, num_heads, num_tokens_Q, head_dim)
        values = values.transpose(1, 2)  # (b, num_heads, num_tokens_K, head_dim)

        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens_Q, num_tokens_K)

        num_tokens_Q = queries.shape[-2]
        num_tokens_K = keys.shape[-2]
        if use_cache:
            # Query i sits at position ptr_current_pos + i of the sequence: its mask row is that one.
            mask_bool = self.mask.bool()[self.ptr_current_pos : self.ptr_current_pos + num_tokens_Q, :num_tokens_K]
            self.ptr_current_pos += num_tokens_Q
        else:
            mask_bool = self.mask.bool()[:num_tokens_Q, :num_tokens_K]  # (num_tokens_Q, num_tokens_K)
        attn_scores.masked_fill_(mask_bool, -torch.inf)

        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)  # (b, num_tokens_Q, num_heads, head_dim)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)  # (b, num_tokens, d_out)
        context_vec = self.out_proj(context_vec)  # (b, num_tokens, d_out)
        return context_vec

    def reset_cache(self) -> None:
        """Forget the cached keys and values; the next cached call starts at position 0."""
        self.cache_k, self.cache_v = None, None
        self.ptr_current_pos = 0


class TransformerBlock(nn.Module):
    """:class:`reference.gpt.TransformerBlock` with the cached attention; ``forward(x, use_cache=False)``."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        shortcut = x  # (batch, num_tokens, emb_dim)
        x = self.norm1(x)
        x = self.att(x, use_cache=use_cache)  # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut

        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)  # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut
        return x  # (batch, num_tokens, emb_dim)


class GPTModel(nn.Module):
    """:class:`reference.gpt.GPTModel` with a KV cache: ``forward(in_idx, use_cache=False)``.

    ``trf_blocks`` is an ``nn.ModuleList`` (an ``nn.Sequential`` cannot pass ``use_cache`` on); both name
    their children 0, 1, 2, ..., so the ``state_dict`` keys are the same. ``current_pos`` counts the tokens
    the cache holds, which is where the next position ids start.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.current_pos = 0

        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        batch_size, seq_len = in_idx.shape  # (batch, num_tokens)
        tok_embeds = self.tok_emb(in_idx)  # (batch, num_tokens, emb_dim)

        if use_cache:
            context_length = self.pos_emb.num_embeddings
            if self.current_pos + seq_len > context_length:
                raise ValueError(
                    f"The KV cache holds {self.current_pos} tokens; {seq_len} more would exceed the context "
                    f"length of {context_length}. Call reset_kv_cache() and feed at most the last "
                    f"{context_length} tokens."
                )
            # The new tokens come after the cached ones: positions current_pos, current_pos + 1, ...
            pos_ids = torch.arange(self.current_pos, self.current_pos + seq_len, device=in_idx.device)
            self.current_pos += seq_len
        else:
            pos_ids = torch.arange(0, seq_len, device=in_idx.device)  # (num_tokens,)
        pos_embeds = self.pos_emb(pos_ids).unsqueeze(0)  # (1, num_tokens, emb_dim)

        x = tok_embeds + pos_embeds  # (batch, num_tokens, emb_dim)
        x = self.drop_emb(x)
        for blk in self.trf_blocks:
            x = blk(x, use_cache=use_cache)  # (batch, num_tokens, emb_dim)
        x = self.final_norm(x)
        logits = self.out_head(x)  # (batch, num_tokens, vocab_size)
        return logits

    def reset_kv_cache(self) -> None:
        """Empty every block's cache and start positions at 0 again: call it before each new prompt."""
        for blk in self.trf_blocks:
            blk.att.reset_cache()
        self.current_pos = 0


def generate_text_simple_cached(
    model: GPTModel, idx: torch.Tensor, max_new_tokens: int, context_size: int | None = None, use_cache: bool = True
) -> torch.Tensor:
    """Greedy generation, token for token the same as :func:`reference.gpt.generate_text_simple`.

    Args:
        model: a :class:`GPTModel` of this module; it is put in eval mode.
        idx: (batch, n) prompt token ids, on the model's device.
        max_new_tokens: how many tokens to append.
        context_size: the longest input to feed; by default the model's context length.
        use_cache: False runs the model on the whole (cropped) sequence at every step, as without a cache.

    Returns:
        (batch, n + max_new_tokens).

    With the cache: the cache is reset, the prompt's last ``context_size`` tokens are run once, then each
    step feeds only the newest token. Once the sequence no longer fits in ``context_size`` tokens, the
    uncached generation slides its window (the positions of all tokens change), which a cache cannot
    follow; from then on every step resets the cache and runs the last ``context_size`` tokens again, so
    the result stays exactly that of the uncached generation, only without the speed-up.
    """
    model.eval()
    ctx_len = context_size or model.pos_emb.num_embeddings

    with torch.no_grad():
        if not use_cache:
            for _ in range(max_new_tokens):
                logits = model(idx[:, -ctx_len:], use_cache=False)  # (batch, <= ctx_len, vocab_size)
                next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)
                idx = torch.cat([idx, next_idx], dim=1)
            return idx

        # Prefill: the prompt's keys and values go into the cache in one forward pass.
        model.reset_kv_cache()
        logits = model(idx[:, -ctx_len:], use_cache=True)  # (batch, <= ctx_len, vocab_size)
        for step in range(max_new_tokens):
            next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)
            idx = torch.cat([idx, next_idx], dim=1)  # (batch, n + step + 1)
            if step == max_new_tokens - 1:
                break  # the last token needs no logits after it
            if idx.shape[1] <= ctx_len:
                logits = model(next_idx, use_cache=True)  # (batch, 1, vocab_size): only the new token
            else:
                model.reset_kv_cache()  # the window slides: recompute it from scratch
                logits = model(idx[:, -ctx_len:], use_cache=True)
    return idx
