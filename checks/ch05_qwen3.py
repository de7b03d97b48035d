"""Public checks of the chapter 5 bonus (Qwen3 from scratch), one per hidden grader test.

The worked examples are the notebook's own: RMSNorm on a row of ordinary values and a row of tiny ones (where eps
matters), the gated feed-forward network with weights set by hand, RoPE's tables for head_dim 4 and a base of
100, one vector turned by a quarter turn. The attention is checked through properties RoPE and QK-norm promise:
the output depends on the distance between tokens, not on where they sit (tables shifted by a few positions give
the same output), and with QK-norm it does not depend on the size of the queries and keys. The block and the model
are checked with spies in place of their parts, the loader with a small skeleton of the model (the book's
attribute names) and random tensors under the checkpoint's names. The hidden grader compares every part with the
reference on other inputs and sizes, and the whole model with the logits transformers computes for the tiny
checkpoint.
"""

import math

import torch
from torch import nn

from checks import Checks, Class, Function, Interface, expect_close, expect_equal, expect_shape, require

# What the students write, with the book's signatures (ch05/11_qwen3/standalone-qwen3.ipynb): the public checks
# look definitions up with these, and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("RMSNorm", "(emb_dim, eps=1e-6, bias=False, qwen3_compatible=True)", methods={"forward": "(x)"}),
    Class("FeedForward", "(cfg)", methods={"forward": "(x)"}),
    Function("compute_rope_params", "(head_dim, theta_base=10_000, context_length=4096, dtype=torch.float32)"),
    Function("apply_rope", "(x, cos, sin)"),
    Class("GroupedQueryAttention", "(d_in, num_heads, num_kv_groups, head_dim=None, qk_norm=False, dtype=None)",
          methods={"forward": "(x, mask, cos, sin)"}),
    Class("TransformerBlock", "(cfg)", methods={"forward": "(x, mask, cos, sin)"}),
    Class("Qwen3Model", "(cfg)", methods={"forward": "(in_idx)"}),
    Function("load_weights_into_qwen", "(model, param_config, params)"),
)

CHECKS = Checks("ch05_qwen3", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

SMALL = {"vocab_size": 50, "context_length": 16, "emb_dim": 12, "n_heads": 4, "n_layers": 2, "hidden_dim": 20,
         "head_dim": 6, "qk_norm": True, "n_kv_groups": 2, "rope_base": 1_000_000.0, "dtype": torch.float32}

HINT_RMS = ("divide each vector by the root of the mean of its squares plus eps (no mean subtracted, unlike "
            "LayerNorm), multiply by scale (and add shift when there is one); Qwen3's eps is 1e-6. With "
            "qwen3_compatible, compute in float32 and return the input's dtype.")
HINT_FF = "the gate (fc1) goes through SiLU and multiplies the up projection (fc2); fc3 maps the product back."
HINT_ROPE_TABLES = ("pair i turns by position * theta_base ** (-2i / head_dim); the head_dim // 2 angles are "
                    "written twice, once for each half, so each table is (context_length, head_dim).")
HINT_ROPE = ("dimension i pairs with dimension i + head_dim // 2: the rotated vector is x * cos + r * sin, where r "
             "puts minus the second half first and the first half second; use the tables' first seq_len rows.")
HINT_GQA = ("project to num_heads query heads and num_kv_groups key and value heads of head_dim each, rotate the "
            "queries and the keys (never the values) with apply_rope, repeat each key and value head for its "
            "group of query heads along the heads dimension (dim 1), mask, scale by sqrt(head_dim), softmax, "
            "combine the heads and apply out_proj.")
HINT_QK_NORM = ("with qk_norm, q_norm and k_norm are RMSNorm(head_dim): they normalise each head's query and key "
                "vector (over head_dim) after the split into heads and BEFORE apply_rope.")
HINT_BLOCK = ("pre-norm, as in GPT: the attention gets norm1(x) with mask, cos and sin, and its output is added to "
              "x; then the feed-forward network gets norm2 of that, and its output is added in turn. No dropout.")
HINT_MODEL = ("token embeddings, then each block with the causal mask (True above the diagonal) and the model's "
              "cos and sin buffers, the final RMSNorm, the output head. The buffers come from compute_rope_params "
              "with head_dim, cfg['rope_base'] and cfg['context_length'].")
HINT_LOAD = ("copy each checkpoint tensor into the parameter the notebook's table names (q_proj into W_query, "
             "gate_proj into fc1, up_proj into fc2, input_layernorm into norm1, q_norm and k_norm into the "
             "attention's q_norm.scale and k_norm.scale, ...), for every layer.")
HINT_TIE = ("without lm_head.weight in the checkpoint, the output head shares the token embedding's weight (weight "
            "tying); with it, the head gets that tensor.")


def inputs(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def causal_mask(tokens):
    return torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)


def rope_tables(head_dim, context_length, base=100.0):
    """RoPE's tables made here, for the attention checks (they do not use your compute_rope_params)."""
    freqs = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(context_length).float()[:, None] * freqs[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


def module(ns, name, *args, **kwargs):
    torch.manual_seed(123)
    built = ns[name](*args, **kwargs)
    require(isinstance(built, nn.Module), f"{name}(...) is not a torch.nn.Module.",
            "keep the class statement and the __init__ of the notebook.")
    return built.eval()


# -- section 1: RMSNorm ----------------------------------------------------------------------------------------

@CHECKS.register("test_rms_norm", subject="RMSNorm", error_hint=HINT_RMS,
                 description="RMSNorm(4) on the notebook's two rows (ordinary values, tiny values where eps "
                             "matters), with a scale, and on bfloat16 input")
def check_rms_norm(ns):
    norm = module(ns, "RMSNorm", 4)
    require(tuple(norm.scale.shape) == (4,), f"RMSNorm(4).scale has shape {tuple(norm.scale.shape)}.",
            "scale is a parameter of emb_dim ones.")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1e-3, -2e-3, 3e-3, 0.0]])
    with torch.no_grad():
        out = norm(x)
    expect_close(out, [[0.36515, 0.73030, 1.09545, 1.46059], [0.47140, -0.94281, 1.41421, 0.0]],
                 "RMSNorm(4) on [[1, 2, 3, 4], [0.001, -0.002, 0.003, 0]]", HINT_RMS)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        scaled = norm(x[:1])
        half = norm(x[:1].to(torch.bfloat16))
    expect_close(scaled, [[0.36515, 1.46059, 0.54772, -1.46059]], "the first row with scale [1, 2, 0.5, -1]",
                 HINT_RMS)
    require(half.dtype == torch.bfloat16, f"RMSNorm on a bfloat16 input returned {half.dtype}.",
            "compute in float32 (qwen3_compatible), then cast the result back to the input's dtype.")


# -- section 2: the feed-forward network -----------------------------------------------------------------------

@CHECKS.register("test_feed_forward", subject="FeedForward", error_hint=HINT_FF,
                 description="FeedForward with fc1 = identity, fc2 = twice the identity, fc3 = identity, on [1, -1]")
def check_feed_forward(ns):
    ff = module(ns, "FeedForward", {"emb_dim": 2, "hidden_dim": 2, "dtype": torch.float32})
    for name in ("fc1", "fc2", "fc3"):
        require(isinstance(getattr(ff, name, None), nn.Linear), f"FeedForward has no nn.Linear {name}.",
                "keep the __init__ the notebook gives.")
    with torch.no_grad():
        ff.fc1.weight.copy_(torch.eye(2))
        ff.fc2.weight.copy_(2 * torch.eye(2))
        ff.fc3.weight.copy_(torch.eye(2))
        out = ff(torch.tensor([[[1.0, -1.0]]]))
    expect_close(out, [[[1.46212, 0.53788]]], "FeedForward on [1, -1] (fc1 = I, fc2 = 2I, fc3 = I)", HINT_FF)


# -- section 3: rotary position embeddings ---------------------------------------------------------------------

@CHECKS.register("test_compute_rope_params", subject="compute_rope_params", error_hint=HINT_ROPE_TABLES,
                 description="the tables for head_dim 4, theta_base 100 and 3 positions, and the default base")
def check_compute_rope_params(ns):
    cos, sin = ns["compute_rope_params"](head_dim=4, theta_base=100, context_length=3)
    what = "compute_rope_params(head_dim=4, theta_base=100, context_length=3)"
    expect_shape(cos, (3, 4), f"{what}: cos", HINT_ROPE_TABLES)
    expect_shape(sin, (3, 4), f"{what}: sin", HINT_ROPE_TABLES)
    angles = [[0.0, 0.0, 0.0, 0.0], [1.0, 0.1, 1.0, 0.1], [2.0, 0.2, 2.0, 0.2]]  # the notebook's worked example
    expect_close(cos, [[math.cos(a) for a in row] for row in angles], f"{what}: cos", HINT_ROPE_TABLES)
    expect_close(sin, [[math.sin(a) for a in row] for row in angles], f"{what}: sin", HINT_ROPE_TABLES)
    cos, _ = ns["compute_rope_params"](head_dim=4, context_length=2)
    expect_close(cos[1], [math.cos(1.0), math.cos(0.01), math.cos(1.0), math.cos(0.01)],
                 "compute_rope_params(head_dim=4, context_length=2): cos at position 1 (the default base, 10,000)",
                 HINT_ROPE_TABLES)


@CHECKS.register("test_apply_rope", subject="apply_rope", error_hint=HINT_ROPE,
                 description="[1, 2, 3, 4] at positions 0 and 1, with tables of three rows whose position 1 turns "
                             "the first pair by a quarter turn")
def check_apply_rope(ns):
    angles = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.pi / 2, 0.0, math.pi / 2, 0.0], [1.0, 1.0, 1.0, 1.0]])
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]]])  # (1, 1, 2, 4)
    out = ns["apply_rope"](x, angles.cos(), angles.sin())
    what = "apply_rope on [1, 2, 3, 4] at positions 0 and 1"
    expect_shape(out, (1, 1, 2, 4), what, "return x's shape; use the tables' first seq_len rows.")
    expect_close(out, [[[[1.0, 2.0, 3.0, 4.0], [-3.0, 2.0, 1.0, 4.0]]]], what, HINT_ROPE)


# -- section 4: grouped-query attention ------------------------------------------------------------------------

def gqa(ns, qk_norm):
    return module(ns, "GroupedQueryAttention", d_in=12, num_heads=4, num_kv_groups=2, head_dim=6, qk_norm=qk_norm)


def expect_shift_invariant(att, x, what, hint):
    """RoPE makes the scores depend on the distance between tokens: tables shifted by 3 positions (every token
    moved 3 places on) give the same output."""
    cos, sin = rope_tables(6, 12)
    mask = causal_mask(x.shape[1])
    with torch.no_grad():
        out = att(x, mask, cos, sin)
        shifted = att(x, mask, cos[3:], sin[3:])
    expect_close(shifted, out.tolist(), f"{what}, with RoPE's tables shifted by 3 positions, compared with the "
                 "unshifted output", hint, atol=1e-4)
    return out


@CHECKS.register("test_grouped_query_attention", subject="GroupedQueryAttention", error_hint=HINT_GQA,
                 description="GroupedQueryAttention(d_in=12, num_heads=4, num_kv_groups=2, head_dim=6): its "
                             "layers' shapes, causal, and an output that depends only on the tokens' distances")
def check_grouped_query_attention(ns):
    att = gqa(ns, qk_norm=False)
    shapes = {name: tuple(getattr(att, name).weight.shape) for name in ("W_query", "W_key", "W_value", "out_proj")}
    expect_equal(shapes, {"W_query": (24, 12), "W_key": (12, 12), "W_value": (12, 12), "out_proj": (12, 24)},
                 "the weights' shapes", "W_query has num_heads * head_dim outputs, W_key and W_value "
                 "num_kv_groups * head_dim; out_proj maps num_heads * head_dim back to d_in.")
    x = inputs(1, 2, 5, 12)
    what = "GroupedQueryAttention on (2, 5, 12)"
    out = expect_shift_invariant(att, x, what, "rotate the queries and the keys only (never the values), "
                                 "with the same tables.")
    expect_shape(out, (2, 5, 12), what, "(b, num_tokens, d_in) out.")
    changed = x.clone()
    changed[:, -1] += 1.0
    cos, sin = rope_tables(6, 12)
    with torch.no_grad():
        after = att(changed, causal_mask(5), cos, sin)
    expect_close(after[:, :-1], out[:, :-1].tolist(), f"{what}: the outputs before the last token when only the "
                 "last token changes", "mask the scores where the mask is True (-inf) before the softmax.")


@CHECKS.register("test_gqa_qk_norm", subject="GroupedQueryAttention", error_hint=HINT_QK_NORM,
                 description="with qk_norm=True: q_norm and k_norm over head_dim, an output that does not change "
                             "when the queries and keys grow tenfold, and still depends only on distances")
def check_gqa_qk_norm(ns):
    att = gqa(ns, qk_norm=True)
    for name in ("q_norm", "k_norm"):
        norm = getattr(att, name, None)
        require(norm is not None and hasattr(norm, "scale"), f"GroupedQueryAttention(..., qk_norm=True) has no "
                f"{name} with a scale.", HINT_QK_NORM)
        expect_equal(tuple(norm.scale.shape), (6,), f"{name}.scale's shape (head_dim is 6, d_in 12)", HINT_QK_NORM)
    with torch.no_grad():
        att.q_norm.scale.copy_(torch.linspace(0.5, 1.5, 6))
        att.k_norm.scale.copy_(torch.linspace(1.5, 0.5, 6))
    x = inputs(2, 1, 6, 12)
    what = "GroupedQueryAttention with qk_norm=True on (1, 6, 12), uneven q_norm and k_norm scales"
    out = expect_shift_invariant(att, x, what, HINT_QK_NORM)
    cos, sin = rope_tables(6, 12)
    with torch.no_grad():
        att.W_query.weight.mul_(10)
        att.W_key.weight.mul_(10)
        larger = att(x, causal_mask(6), cos, sin)
    expect_close(larger, out.tolist(), f"{what}, with W_query and W_key ten times larger", HINT_QK_NORM, atol=1e-4)


# -- section 5: the transformer block ---------------------------------------------------------------------------

class SpyAttention(nn.Module):
    """Stands in for the attention: records what it is given, returns a linear layer's output."""

    def __init__(self, width):
        super().__init__()
        self.inner, self.seen = nn.Linear(width, width), []

    def forward(self, x, mask, cos, sin):
        self.seen.append((mask, cos, sin))
        return self.inner(x)


@CHECKS.register("test_transformer_block", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock with linear layers as its attention and feed-forward network: the "
                             "pre-norm steps, done with its own norm1 and norm2")
def check_transformer_block(ns):
    block = module(ns, "TransformerBlock", SMALL)
    for name in ("att", "ff", "norm1", "norm2"):
        require(hasattr(block, name), f"TransformerBlock(cfg) has no attribute {name}.",
                "keep the __init__ the notebook gives.")
    torch.manual_seed(5)
    block.att, block.ff = SpyAttention(12), nn.Linear(12, 12)
    with torch.no_grad():
        block.norm1.scale.copy_(torch.linspace(0.5, 1.5, 12))
        block.norm2.scale.copy_(torch.linspace(1.5, 0.5, 12))
    x = inputs(3, 2, 4, 12)
    mask, (cos, sin) = causal_mask(4), rope_tables(6, 16)
    with torch.no_grad():
        out = block(x, mask, cos, sin)
        h = x + block.att.inner(block.norm1(x))
        steps = h + block.ff(block.norm2(h))
    require(len(block.att.seen) == 1 and block.att.seen[0][0] is mask and block.att.seen[0][1] is cos,
            "the attention was not called once with the block's mask, cos and sin.", HINT_BLOCK)
    expect_close(out, steps.tolist(), "TransformerBlock(cfg) on (2, 4, 12), compared with the pre-norm steps done "
                 "with its own norm1 and norm2", HINT_BLOCK, atol=1e-5)


# -- section 6: the model ---------------------------------------------------------------------------------------

class SpyBlock(nn.Module):
    """Stands in for a block: records the mask, cos and sin it is given, passes x through."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, mask, cos, sin):
        self.seen.append((mask, cos, sin))
        return x


@CHECKS.register("test_qwen3_model", subject="Qwen3Model", error_hint=HINT_MODEL,
                 description="Qwen3Model's RoPE buffers (from cfg's head_dim, rope_base and context_length), the "
                             "causal mask it hands each block, and its steps (blocks replaced by spies)")
def check_qwen3_model(ns):
    model = module(ns, "Qwen3Model", SMALL)
    expected_cos, expected_sin = ns["compute_rope_params"](6, 1_000_000.0, 16)
    for name, table in (("cos", expected_cos), ("sin", expected_sin)):
        require(isinstance(getattr(model, name, None), torch.Tensor), f"Qwen3Model has no buffer {name}.",
                "keep the __init__'s register_buffer calls.")
        expect_close(getattr(model, name), table.tolist(), f"Qwen3Model(cfg).{name}, compared with your "
                     "compute_rope_params(6, 1_000_000.0, 16)", "pass cfg['rope_base'] as theta_base.")
    model.trf_blocks = nn.ModuleList([SpyBlock() for _ in range(SMALL["n_layers"])])
    idx = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    with torch.no_grad():
        got = model(idx)
        steps = model.out_head(model.final_norm(model.tok_emb(idx)))
    expect_shape(got, (2, 5, 50), "Qwen3Model on token ids of shape (2, 5)", "(batch, num_tokens, vocab_size).")
    expect_close(got, steps.tolist(), "Qwen3Model with blocks that pass x through, compared with its own "
                 "embedding, final norm and head", HINT_MODEL, atol=1e-5)
    for number, spy in enumerate(model.trf_blocks):
        require(len(spy.seen) == 1, f"block {number} was called {len(spy.seen)} times.", HINT_MODEL)
        mask, cos, _ = spy.seen[0]
        expect_equal(mask.tolist(), causal_mask(5).tolist(), f"the mask block {number} received for 5 tokens",
                     HINT_MODEL)
        require(cos is model.cos, f"block {number} did not receive the model's cos buffer.", HINT_MODEL)


# -- section 7: loading a checkpoint ----------------------------------------------------------------------------

class Norm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(width))


class Skeleton(nn.Module):
    """A stand-in Qwen3 with the book's attribute names and no forward: what the loader fills."""

    def __init__(self, cfg):
        super().__init__()
        e, h, hd, g = cfg["emb_dim"], cfg["n_heads"], cfg["head_dim"], cfg["n_kv_groups"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], e)
        self.trf_blocks = nn.ModuleList()
        for _ in range(cfg["n_layers"]):
            block = nn.Module()
            block.att = nn.Module()
            block.att.W_query, block.att.W_key = nn.Linear(e, h * hd, bias=False), nn.Linear(e, g * hd, bias=False)
            block.att.W_value, block.att.out_proj = nn.Linear(e, g * hd, bias=False), nn.Linear(h * hd, e, bias=False)
            block.att.q_norm, block.att.k_norm = Norm(hd), Norm(hd)
            block.ff = nn.Module()
            block.ff.fc1, block.ff.fc2 = nn.Linear(e, cfg["hidden_dim"], bias=False), nn.Linear(e, cfg["hidden_dim"],
                                                                                                bias=False)
            block.ff.fc3 = nn.Linear(cfg["hidden_dim"], e, bias=False)
            block.norm1, block.norm2 = Norm(e), Norm(e)
            self.trf_blocks.append(block)
        self.final_norm = Norm(e)
        self.out_head = nn.Linear(e, cfg["vocab_size"], bias=False)


def checkpoint_names(cfg):
    """Each parameter of the skeleton -> the checkpoint's name for it (the notebook's table)."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight"}
    ours = {"att.W_query.weight": "self_attn.q_proj", "att.W_key.weight": "self_attn.k_proj",
            "att.W_value.weight": "self_attn.v_proj", "att.out_proj.weight": "self_attn.o_proj",
            "att.q_norm.scale": "self_attn.q_norm", "att.k_norm.scale": "self_attn.k_norm",
            "norm1.scale": "input_layernorm", "norm2.scale": "post_attention_layernorm",
            "ff.fc1.weight": "mlp.gate_proj", "ff.fc2.weight": "mlp.up_proj", "ff.fc3.weight": "mlp.down_proj"}
    for layer in range(cfg["n_layers"]):
        for mine, theirs in ours.items():
            names[f"trf_blocks.{layer}.{mine}"] = f"model.layers.{layer}.{theirs}.weight"
    return names


def random_checkpoint(model, names, seed):
    """Random tensors under the checkpoint's names, shaped as the model's parameters."""
    generator = torch.Generator().manual_seed(seed)
    shapes = dict(model.named_parameters())
    return {theirs: torch.randn(shapes[mine].shape, generator=generator) for mine, theirs in names.items()}


@CHECKS.register("test_load_weights_into_qwen", subject="load_weights_into_qwen", error_hint=HINT_LOAD,
                 description="load_weights_into_qwen fills every parameter of a two-layer skeleton of the model "
                             "with the tensor of its checkpoint name")
def check_load_weights(ns):
    model, names = Skeleton(SMALL), checkpoint_names(SMALL)
    params = random_checkpoint(model, names, 7)
    ns["load_weights_into_qwen"](model, SMALL, params)
    found = dict(model.named_parameters())
    wrong = [f"{mine} (from {theirs})" for mine, theirs in names.items()
             if mine not in found or not torch.equal(found[mine].detach(), params[theirs])]
    expect_equal(wrong, [], "the parameters that do not hold their checkpoint tensor after loading", HINT_LOAD)


@CHECKS.register("test_load_weights_ties_the_head", subject="load_weights_into_qwen", error_hint=HINT_TIE,
                 description="without lm_head.weight the head equals the token embedding; with it, the head holds it")
def check_load_weights_ties(ns):
    model, names = Skeleton(SMALL), checkpoint_names(SMALL)
    params = random_checkpoint(model, names, 8)
    ns["load_weights_into_qwen"](model, SMALL, params)
    require(torch.equal(model.out_head.weight.detach(), params["model.embed_tokens.weight"]),
            "after loading a checkpoint without lm_head.weight, out_head.weight is not the token embedding.",
            HINT_TIE)
    model = Skeleton(SMALL)
    head = inputs(9, SMALL["vocab_size"], SMALL["emb_dim"])
    ns["load_weights_into_qwen"](model, SMALL, {**params, "lm_head.weight": head})
    require(torch.equal(model.out_head.weight.detach(), head), "after loading a checkpoint with lm_head.weight, "
            "out_head.weight does not hold it.", HINT_TIE)


# -- section 8: the whole model ---------------------------------------------------------------------------------

@CHECKS.register("test_tiny_qwen3_logits", subject="load_weights_into_qwen",
                 error_hint="fix the checks of the parts first; then see how the model uses them.",
                 description="your Qwen3Model loaded through your load_weights_into_qwen from a random checkpoint: "
                             "logits of the right shape, finite, causal, and a head tied to the embedding")
def check_tiny_qwen3_logits(ns):
    model = module(ns, "Qwen3Model", SMALL)
    params = random_checkpoint(model, checkpoint_names(SMALL), 10)
    ns["load_weights_into_qwen"](model, SMALL, params)
    idx = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    changed = idx.clone()
    changed[:, -1] = 7
    with torch.no_grad():
        logits, after = model(idx), model(changed)
    what = "your Qwen3Model, loaded through your load_weights_into_qwen, on token ids of shape (2, 6)"
    expect_shape(logits, (2, 6, 50), what, "(batch, num_tokens, vocab_size) logits.")
    expect_close(after[:, :-1], logits[:, :-1].tolist(), f"{what}: the logits before the last token when only "
                 "the last token changes", HINT_MODEL, atol=1e-4)
    require(torch.equal(model.out_head.weight.detach(), model.tok_emb.weight.detach()), f"{what}: the head is not "
            "the token embedding after loading a checkpoint without lm_head.weight.", HINT_TIE)
