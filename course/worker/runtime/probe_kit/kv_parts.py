"""Correct stand-ins for the parts of the KV-cache assignment (chapter 4 bonus), so a composite is graded alone.

The student's TransformerBlock is graded on a stand-in MultiHeadAttention (with a cache), LayerNorm and
FeedForward; the student's GPTModel on stand-in blocks and LayerNorms; the student's generate_text_simple_cached
on a stand-in GPTModel. Each stand-in has the attribute names of the notebook's stubs (W_query, W_key, W_value,
out_proj, mask, att, ff, norm1, norm2, tok_emb, pos_emb, trf_blocks, final_norm, out_head), so the grader loads
the reference's parameters into it, and the methods the book's code calls (reset_cache, reset_kv_cache).

The stand-in GPTModel refuses to hold more tokens than its context length (a clear ValueError), and records
what it is fed (`fed`: one (number of tokens, use_cache) pair per call), so a grader can tell whether a
generation used the cache.

    with on_stand_ins(student, ("MultiHeadAttention", "LayerNorm", "FeedForward")):
        block = student.TransformerBlock(cfg)
"""

import torch
from torch import nn

from probe_kit.gpt_parts import FeedForward, LayerNorm
from probe_kit.gpt_parts import MultiHeadAttention as UncachedMultiHeadAttention
from probe_kit.parts import replaced


class MultiHeadAttention(UncachedMultiHeadAttention):
    """Causal multi-head attention that can keep the keys and values of the tokens it has seen: chapter 3's
    stand-in with a cache, and its mask kept out of the state_dict, as the book's cached module keeps it."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.register_buffer("mask", self.mask, persistent=False)
        self.cached = None  # (keys, values), each (batch, num_heads, tokens seen, head_dim)

    def reset_cache(self):
        self.cached = None

    def forward(self, x, use_cache=False):
        batch, tokens, _ = x.shape

        def heads(t):  # (batch, tokens, d_out) -> (batch, num_heads, tokens, head_dim)
            return t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        queries, keys, values = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        seen = 0
        if use_cache:
            if self.cached is not None:
                seen = self.cached[0].shape[2]
                keys = torch.cat([self.cached[0], keys], dim=2)
                values = torch.cat([self.cached[1], values], dim=2)
            self.cached = (keys, values)
        # Query i sits at position seen + i: it may look at keys 0 .. seen + i.
        query_pos = torch.arange(seen, seen + tokens, device=x.device).unsqueeze(1)
        key_pos = torch.arange(keys.shape[2], device=x.device).unsqueeze(0)
        scores = (queries @ keys.transpose(-2, -1)) / keys.shape[-1] ** 0.5
        weights = torch.softmax(scores.masked_fill(key_pos > query_pos, float("-inf")), dim=-1)
        context = (self.dropout(weights) @ values).transpose(1, 2).reshape(batch, tokens, self.d_out)
        return self.out_proj(context)


class TransformerBlock(nn.Module):
    """GPT-2's pre-LayerNorm block, passing use_cache on to its attention."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                      cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, use_cache=False):
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache=use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """A GPT with a KV cache, built from the stand-ins above; records what it is fed in `fed`."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.current_pos = 0
        self.fed = []

    def reset_kv_cache(self):
        for block in self.trf_blocks:
            block.att.reset_cache()
        self.current_pos = 0

    def forward(self, in_idx, use_cache=False):
        tokens = in_idx.shape[1]
        self.fed.append((tokens, bool(use_cache)))
        start = self.current_pos if use_cache else 0
        if start + tokens > self.pos_emb.num_embeddings:
            raise ValueError(f"the model's KV cache would hold {start + tokens} tokens, more than its context "
                             f"length {self.pos_emb.num_embeddings}")
        if use_cache:
            self.current_pos += tokens
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(torch.arange(start, start + tokens,
                                                                             device=in_idx.device)))
        for block in self.trf_blocks:
            x = block(x, use_cache=use_cache)
        return self.out_head(self.final_norm(x))



def fed_in_pieces(module, x, pieces):
    """`x` fed to `module` with the cache, pieces[0] tokens, then pieces[1], ...; the outputs stacked along the
    tokens (dimension 1)."""
    outputs, start = [], 0
    with torch.no_grad():
        for size in pieces:
            outputs.append(module(x[:, start:start + size], use_cache=True))
            start += size
    return torch.cat(outputs, dim=1)


STAND_INS = {part.__name__: part for part in (LayerNorm, FeedForward, MultiHeadAttention, TransformerBlock, GPTModel)}


def on_stand_ins(student, names):
    """The student's module with each of `names` bound to its stand-in while the `with` block runs."""
    return replaced(student, **{name: STAND_INS[name] for name in names})
