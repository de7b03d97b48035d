"""Public checks of the chapter 5 bonus (from GPT to Llama 3.2), one per hidden grader test.

Everything is checked on the student's OWN code and weights, through properties a correct component has: an
RMSNorm output has root mean square 1 (and eps shows on tiny inputs), the feed-forward equals its formula on its
own layers, RoPE tables hold the frequencies of the notebook's worked example and apply_rope turns each pair
(i, i + head_dim/2) without changing its length, an attention with zeroed queries averages each group's values
over the past, the block equals its formula on its own parts, the model is causal, the loader fills a small shell
model that has the book's attribute names, and a model saved under the Hugging Face names and loaded back by the
student's loader gives the same logits. The hidden grader compares every component with the reference on other
inputs and sizes, and the tiny checkpoint's logits with transformers'.
"""

import math

import torch
from torch import nn

from checks import Checks, Class, Function, Interface, expect_close, expect_equal, expect_shape, require

TINY = {"vocab_size": 96, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "hidden_dim": 48,
        "n_kv_groups": 2, "rope_base": 500_000.0, "dtype": torch.float32,
        "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_context_length": 8192}}

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("RMSNorm", "(emb_dim, eps=1e-05)", example={"emb_dim": 8}, attributes=("eps", "weight"),
          methods={"forward": "(x)"}),
    Class("FeedForward", "(cfg)", example={"cfg": TINY}, attributes=("fc1", "fc2", "fc3"), methods={"forward": "(x)"}),
    Function("compute_rope_params",
             "(head_dim, theta_base=10000, context_length=4096, freq_config=None, dtype=torch.float32)"),
    Function("apply_rope", "(x, cos, sin)"),
    Class("GroupedQueryAttention", "(d_in, d_out, num_heads, num_kv_groups, dtype=None)",
          example={"d_in": 32, "d_out": 32, "num_heads": 4, "num_kv_groups": 2},
          attributes=("W_query", "W_key", "W_value", "out_proj"), methods={"forward": "(x, mask, cos, sin)"}),
    Class("TransformerBlock", "(cfg)", example={"cfg": TINY}, attributes=("att", "ff", "norm1", "norm2"),
          methods={"forward": "(x, mask, cos, sin)"}),
    Class("Llama3Model", "(cfg)", methods={"forward": "(in_idx)"}),  # its __init__ is the student's in part
    Function("load_weights_into_llama", "(model, param_config, params)"),
)

CHECKS = Checks("ch05_llama", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

HINT_RMS = ("divide each vector by the square root of (its mean square + eps), over the last dimension, then "
            "multiply by weight; RMSNorm subtracts no mean.")
HINT_FF = "the SiLU goes on the gate, fc1; its output multiplies fc2's element by element; fc3 maps back."
HINT_ROPE = ("inverse frequencies theta_base ** (-2i / head_dim) for i = 0 .. head_dim/2 - 1; with freq_config, "
             "Llama 3's scaling; angles = position * inverse frequency, concatenated with themselves, then cos, sin.")
HINT_APPLY = ("rotate the pairs (x[i], x[i + head_dim/2]): rotated = (-second half, first half); "
              "x * cos + rotated * sin.")
HINT_GQA = ("RoPE on queries and keys only; keys and values have num_kv_groups heads, each repeated for its "
            "group_size consecutive query heads (repeat_interleave along the head dimension).")
HINT_BLOCK = "pre-norm: the shortcut adds the block's input to att(norm1(x), ...), then to ff(norm2(...))."
HINT_MODEL = ("tok_emb, the blocks with a causal mask (True above the diagonal) and the model's cos and sin, "
              "final_norm, out_head; cos and sin built once in __init__ from the configuration.")
HINT_LOADER = ("q/k/v/o_proj -> W_query/W_key/W_value/out_proj, gate/up/down_proj -> fc1/fc2/fc3, input_layernorm "
               "-> norm1, post_attention_layernorm -> norm2, model.norm -> final_norm, embed_tokens -> tok_emb, "
               "lm_head -> out_head.")
HINT_TIED = "without lm_head.weight in the file, the head shares the token embedding's weight (weight tying)."


def inputs(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def built(ns, name, seed=123, **init):
    torch.manual_seed(seed)
    module = ns[name](**init)
    require(isinstance(module, nn.Module), f"{name}(...) is not a torch.nn.Module.",
            "keep the class statement and the __init__ of the notebook.")
    return module.eval()


def causal_mask(tokens):
    return torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)


# -- section 1: RMSNorm and the feed-forward network ------------------------------------------------------------

@CHECKS.register("test_rms_norm", subject="RMSNorm", error_hint=HINT_RMS,
                 description="RMSNorm: each output vector has root mean square 1 (weight 1), no mean is subtracted, "
                             "and eps shows on tiny inputs")
def check_rms_norm(ns):
    norm = built(ns, "RMSNorm", emb_dim=6)
    x = inputs(1, 2, 3, 6) + 1.0
    with torch.no_grad():
        out = norm(x)
    expect_shape(out, (2, 3, 6), "RMSNorm(6) on x of shape (2, 3, 6)")
    rms = out.pow(2).mean(dim=-1).sqrt()
    expect_close(rms, torch.ones(2, 3).tolist(), "the root mean square of each output vector", HINT_RMS, atol=1e-3)
    with torch.no_grad():
        constant = norm(torch.full((1, 6), 2.0))
    expect_close(constant, torch.ones(1, 6).tolist(), "RMSNorm(6) of a vector of 2s", "a constant vector "
                 "has root mean square equal to its value: it becomes a vector of ones (no mean subtracted).")
    # The worked example of the notebook: a vector of 0.001s is far below eps's scale.
    with torch.no_grad():
        tiny = norm(torch.full((1, 6), 1e-3))
    expect_close(tiny, torch.full((1, 6), 1e-3 / math.sqrt(1e-6 + 1e-5)).tolist(), "RMSNorm(6) (eps=1e-5) of a "
                 "vector of 0.001s", HINT_RMS)


@CHECKS.register("test_feed_forward", subject="FeedForward", error_hint=HINT_FF,
                 description="FeedForward: fc1 and fc2 map emb_dim to hidden_dim without biases, and the output is "
                             "fc3 of the SiLU of fc1 times fc2 (on its own weights)")
def check_feed_forward(ns):
    ff = built(ns, "FeedForward", cfg=TINY)
    for name, shape in (("fc1", (48, 32)), ("fc2", (48, 32)), ("fc3", (32, 48))):
        layer = getattr(ff, name, None)
        require(isinstance(layer, nn.Linear), f"FeedForward has no nn.Linear `{name}`.", HINT_FF)
        expect_equal(tuple(layer.weight.shape), shape, f"{name}.weight's shape", "no transpose: nn.Linear(in, out) "
                     "stores (out, in).")
        require(layer.bias is None, f"{name} has a bias.", "Llama's linear layers have none: bias=False.")
    x = inputs(2, 2, 3, 32)
    with torch.no_grad():
        out = ff(x)
        expected = ff.fc3(nn.functional.silu(ff.fc1(x)) * ff.fc2(x))
    expect_close(out, expected.tolist(), "FeedForward's output", HINT_FF)


# -- section 2: rotary position embeddings --------------------------------------------------------------------

@CHECKS.register("test_rope_params", subject="compute_rope_params", error_hint=HINT_ROPE,
                 description="compute_rope_params: shapes (context_length, head_dim), cos 1 and sin 0 at position 0, "
                             "both halves alike, and the notebook's worked example of the scaled frequencies")
def check_rope_params(ns):
    cos, sin = ns["compute_rope_params"](8, theta_base=10_000, context_length=12)
    expect_shape(cos, (12, 8), "cos from compute_rope_params(8, context_length=12)")
    expect_shape(sin, (12, 8), "sin from compute_rope_params(8, context_length=12)")
    expect_close(cos[0], torch.ones(8).tolist(), "cos at position 0", "position 0 has angle 0.")
    expect_close(sin[0], torch.zeros(8).tolist(), "sin at position 0", "position 0 has angle 0.")
    expect_close(cos[:, 4:], cos[:, :4].tolist(), "the second half of cos against its first half", HINT_ROPE)
    frequencies = [10_000 ** (-2 * i / 8) for i in range(4)]
    expect_close(torch.atan2(sin[1, :4], cos[1, :4]), frequencies, "the angles of position 1 (no scaling)", HINT_ROPE,
                 atol=1e-6)
    # The notebook's worked example: the tiny model's four frequencies with Llama 3's scaling.
    cos, sin = ns["compute_rope_params"](8, theta_base=500_000.0, context_length=2, freq_config=TINY["rope_freq"])
    scaled = torch.atan2(sin[1, :4], cos[1, :4]).double()
    worked = [1.0, 0.0376060, 0.0004296, 0.0000016620]
    require(torch.allclose(scaled, torch.tensor(worked, dtype=torch.float64), rtol=2e-3, atol=0),
            f"with the tiny configuration's freq_config, the angles of position 1 are {scaled.tolist()}, expected "
            f"about {worked} (kept, kept, blended, divided by 32).", HINT_ROPE)


@CHECKS.register("test_apply_rope", subject="apply_rope", error_hint=HINT_APPLY,
                 description="apply_rope: the shape is kept, position 0 is unchanged, and each pair (i, i + "
                             "head_dim/2) keeps its length")
def check_apply_rope(ns):
    x = inputs(3, 1, 2, 5, 8)
    cos, sin = ns["compute_rope_params"](8, theta_base=10_000, context_length=12)
    out = ns["apply_rope"](x, cos, sin)
    expect_shape(out, (1, 2, 5, 8), "apply_rope(x, cos, sin) on x of shape (1, 2, 5, 8), cos of shape (12, 8)",
                 "cut cos and sin to the sequence's length.")
    expect_close(out[:, :, 0], x[:, :, 0].tolist(), "the rotated vectors at position 0", HINT_APPLY)
    lengths = out[..., :4].pow(2) + out[..., 4:].pow(2)
    expect_close(lengths, (x[..., :4].pow(2) + x[..., 4:].pow(2)).tolist(), "the squared length of each pair "
                 "(x[i], x[i + 4]) after the rotation", HINT_APPLY)
    require(not torch.allclose(out[:, :, 1:], x[:, :, 1:]), "apply_rope left the later positions unchanged.",
            HINT_APPLY)


# -- section 3: grouped-query attention, the block and the model ----------------------------------------------

@CHECKS.register("test_grouped_query_attention", subject="GroupedQueryAttention", error_hint=HINT_GQA,
                 description="GroupedQueryAttention: layer shapes, causal, and with zeroed queries each head "
                             "averages its own group's (unrotated) values over the past")
def check_grouped_query_attention(ns):
    att = built(ns, "GroupedQueryAttention", d_in=16, d_out=16, num_heads=4, num_kv_groups=2)
    expect_equal(tuple(att.W_key.weight.shape), (8, 16), "W_key.weight's shape (2 groups of head_dim 4)",
                 "keys and values have num_kv_groups * head_dim outputs.")
    cos, sin = ns["compute_rope_params"](4, theta_base=10_000, context_length=8)
    x = inputs(4, 2, 5, 16)
    with torch.no_grad():
        out = att(x, causal_mask(5), cos, sin)
        expect_shape(out, (2, 5, 16), "GroupedQueryAttention(16, 16, 4, 2) on x of shape (2, 5, 16)")
        changed = x.clone()
        changed[:, -1] += 1.0
        later = att(changed, causal_mask(5), cos, sin)
        expect_close(later[:, :-1], out[:, :-1].tolist(), "the outputs before the last token after changing it",
                     "mask the future: True above the diagonal.")
        att.W_query.weight.zero_()  # equal scores: each token averages the values up to it
        out = att(x, causal_mask(5), cos, sin)
        values = att.W_value(x).view(2, 5, 2, 4)                       # (b, tokens, groups, head_dim)
        average = values.cumsum(dim=1) / torch.arange(1, 6).view(1, 5, 1, 1)
        heads = average.repeat_interleave(2, dim=2).reshape(2, 5, 16)  # query heads 0, 1 -> group 0; 2, 3 -> 1
        expected = att.out_proj(heads)
    expect_close(out, expected.tolist(), "the output with W_query set to zero (each head averages its group's "
                 "values over the tokens up to it)", HINT_GQA)


@CHECKS.register("test_transformer_block", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock: no dropout, and its output equals the pre-norm formula on its own "
                             "att, ff, norm1 and norm2")
def check_transformer_block(ns):
    block = built(ns, "TransformerBlock", cfg=TINY)
    cos, sin = ns["compute_rope_params"](8, theta_base=500_000.0, context_length=16)
    x = inputs(5, 2, 6, 32)
    mask = causal_mask(6)
    with torch.no_grad():
        out = block(x, mask, cos, sin)
        h = x + block.att(block.norm1(x), mask, cos, sin)
        expected = h + block.ff(block.norm2(h))
    expect_shape(out, (2, 6, 32), "TransformerBlock on x of shape (2, 6, 32)")
    expect_close(out, expected.tolist(), "the block's output against its own parts", HINT_BLOCK)
    require(not any(isinstance(m, nn.Dropout) for m in block.modules()), "the block holds a Dropout layer.",
            "Llama has no dropout.")


@CHECKS.register("test_llama3_model", subject="Llama3Model", error_hint=HINT_MODEL,
                 description="Llama3Model: logits of shape (batch, num_tokens, vocab_size), causal, cos and sin of "
                             "shape (context_length, head_dim) outside the state_dict")
def check_llama3_model(ns):
    model = built(ns, "Llama3Model", cfg=TINY)
    expect_shape(model.cos, (64, 8), "the model's cos", "compute_rope_params(emb_dim // n_heads, rope_base, "
                 "context_length, rope_freq) in __init__.")
    require(not any(key in ("cos", "sin") for key in model.state_dict()), "cos and sin are in the state_dict.",
            "register them as non-persistent buffers: they are computed, not loaded.")
    idx = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits = model(idx)
        changed = idx.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 96
        later = model(changed)
    expect_shape(logits, (2, 7, 96), "Llama3Model logits for token ids of shape (2, 7)")
    expect_close(later[:, :-1], logits[:, :-1].tolist(), "the logits before the last token after changing it",
                 HINT_MODEL)


# -- section 4: loading a Hugging Face checkpoint ---------------------------------------------------------------

class Shell(nn.Module):
    """The attributes a loader fills, with the book's names and the tiny model's shapes (no forward)."""

    def __init__(self, cfg):
        super().__init__()
        emb, hidden, kv = cfg["emb_dim"], cfg["hidden_dim"], cfg["n_kv_groups"] * cfg["emb_dim"] // cfg["n_heads"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], emb)
        self.trf_blocks = nn.ModuleList()
        for _ in range(cfg["n_layers"]):
            block = nn.Module()
            block.att = nn.Module()
            block.att.W_query, block.att.W_key = nn.Linear(emb, emb, bias=False), nn.Linear(emb, kv, bias=False)
            block.att.W_value, block.att.out_proj = nn.Linear(emb, kv, bias=False), nn.Linear(emb, emb, bias=False)
            block.ff = nn.Module()
            block.ff.fc1, block.ff.fc2 = nn.Linear(emb, hidden, bias=False), nn.Linear(emb, hidden, bias=False)
            block.ff.fc3 = nn.Linear(hidden, emb, bias=False)
            block.norm1, block.norm2 = nn.RMSNorm(emb), nn.RMSNorm(emb)
            self.trf_blocks.append(block)
        self.final_norm = nn.RMSNorm(emb)
        self.out_head = nn.Linear(emb, cfg["vocab_size"], bias=False)


NAMES = {"att.W_query": "self_attn.q_proj", "att.W_key": "self_attn.k_proj", "att.W_value": "self_attn.v_proj",
         "att.out_proj": "self_attn.o_proj", "ff.fc1": "mlp.gate_proj", "ff.fc2": "mlp.up_proj",
         "ff.fc3": "mlp.down_proj", "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}


def numbered_file(shell, with_head):
    """A checkpoint for the shell whose every tensor is filled with its own number (1, 2, ...)."""
    shapes = {"model.embed_tokens.weight": shell.tok_emb.weight.shape, "model.norm.weight": (TINY["emb_dim"],)}
    for layer, block in enumerate(shell.trf_blocks):
        for ours, theirs in NAMES.items():
            shapes[f"model.layers.{layer}.{theirs}.weight"] = block.get_submodule(ours).weight.shape
    if with_head:
        shapes["lm_head.weight"] = shell.out_head.weight.shape
    return {name: torch.full(tuple(shape), float(number)) for number, (name, shape) in enumerate(shapes.items(), 1)}


def filled(ns, with_head):
    shell = Shell(TINY)
    params = numbered_file(shell, with_head)
    ns["load_weights_into_llama"](shell, TINY, params)
    return shell, params


def number_of(tensor):
    """The number a loaded tensor was filled with (None when it is not one constant)."""
    value = float(tensor.flatten()[0])
    return value if bool((tensor == value).all()) else None


@CHECKS.register("test_load_weights_mapping", subject="load_weights_into_llama", error_hint=HINT_LOADER,
                 description="load_weights_into_llama: each attribute of a small model with the book's names gets "
                             "the checkpoint tensor of its Hugging Face name")
def check_load_weights_mapping(ns):
    shell, params = filled(ns, with_head=True)
    expected = {"tok_emb": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "out_head": "lm_head.weight"}
    for layer in range(TINY["n_layers"]):
        for ours, theirs in NAMES.items():
            expected[f"trf_blocks.{layer}.{ours}"] = f"model.layers.{layer}.{theirs}.weight"
    numbers = {float(number): name for number, name in enumerate(params, 1)}
    for ours, theirs in expected.items():
        got = number_of(shell.get_submodule(ours).weight)
        require(got == number_of(params[theirs]), f"{ours}.weight holds {numbers.get(got, 'no tensor of the file')} "
                f"after loading, expected {theirs}.", HINT_LOADER)


@CHECKS.register("test_load_weights_ties_head", subject="load_weights_into_llama", error_hint=HINT_LOADER,
                 description="load_weights_into_llama: with no lm_head.weight in the file, out_head gets the token "
                             "embedding's weight")
def check_load_weights_ties_head(ns):
    shell, params = filled(ns, with_head=False)
    require(torch.equal(shell.out_head.weight, params["model.embed_tokens.weight"]), "out_head.weight is not the "
            "token embedding's weight after loading a file without lm_head.weight.", HINT_TIED)


# -- section 5: the whole model from a checkpoint ---------------------------------------------------------------

def huggingface_names(model):
    """The weights of a Llama3Model under the Hugging Face checkpoint's names, as Llama 3.2's file holds them (no
    lm_head.weight: tied)."""
    params = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.final_norm.weight}
    for layer, block in enumerate(model.trf_blocks):
        for ours, theirs in NAMES.items():
            params[f"model.layers.{layer}.{theirs}.weight"] = block.get_submodule(ours).weight
    return {name: tensor.detach().clone() for name, tensor in params.items()}


@CHECKS.register("test_tiny_llama32_logits", subject="load_weights_into_llama", error_hint=HINT_MODEL,
                 description="your Llama3Model's weights, saved under the Hugging Face names and loaded by your loader "
                             "into a fresh Llama3Model, give the same logits (the notebook compares with transformers)")
def check_tiny_llama32_logits(ns):
    cfg = {**TINY, "context_length": 16}
    source = built(ns, "Llama3Model", seed=1, cfg=cfg)
    with torch.no_grad():
        source.out_head.weight.copy_(source.tok_emb.weight)  # Llama 3.2's head is the embedding
    params = huggingface_names(source)
    target = built(ns, "Llama3Model", seed=2, cfg=cfg)
    ns["load_weights_into_llama"](target, cfg, params)
    idx = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected, logits = source(idx), target.eval()(idx)
    expect_shape(logits, (2, 9, 96), "the loaded model's logits for token ids of shape (2, 9)")
    expect_close(logits, expected.tolist(), "the logits of a fresh Llama3Model loaded by your loader from another "
                 "one's weights (Hugging Face names, no lm_head.weight), against the other one's",
                 "the components pass their checks? Then check how they fit: the loader's names, the tied head, "
                 "head_dim = emb_dim // n_heads.", atol=1e-5)
