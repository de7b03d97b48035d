"""Grader of the chapter 5 bonus: Qwen3 from scratch (the book's ch05/11_qwen3/standalone-qwen3.ipynb).

Bottom up: RMSNorm, the gated feed-forward network, RoPE's tables and rotation, grouped-query attention with
and without QK-norm, the block and the model are each compared with the reference on seeded inputs; the
reference's weights (norm scales drawn at random, so that a norm whose scale is ignored, or a QK-norm applied
after RoPE, shows) are loaded into the student's modules by name. When a result is wrong, the grader recomputes
it with one classic mistake switched on (a mean subtracted, Llama's eps, gate and up swapped, the wrong halves
rotated, RoPE on the values, QK-norm missing or after RoPE, ...) and names the mistake that fits.

The loader is graded on a correct stand-in Qwen3Model (probe_kit/qwen3_parts.py) filled from the tiny random
checkpoint data/tiny-qwen3.safetensors (written by transformers, the published Qwen3's key names): every
parameter must hold its checkpoint tensor, and the head must be tied to the token embedding when the checkpoint
has no lm_head.weight (and hold lm_head.weight when it has one).

A bug costs the points of its component: GroupedQueryAttention runs on stand-in RMSNorm and apply_rope, the
block on a stand-in attention, feed-forward network and RMSNorm, the model on stand-in blocks, RMSNorm and
compute_rope_params (@pytest.mark.stand_ins). The last test (PARTS_FIT) runs the student's own model, loaded
through the student's own loader from the tiny checkpoint, and compares its logits with those transformers
computed (data/tiny-qwen3-logits.safetensors): the whole of Qwen3, as the published weights would run.
"""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from checks.ch05_qwen3 import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, Mistake, error_mentions, expect_close, probe
from course.grading.compare import expect_true
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.grading.mistakes import which_mistake
from course.grading.probes import run_here
from graders.shared.checkpoints import tiny_checkpoint
from reference import qwen3 as ref

# A small Qwen3 in the book's vocabulary: head_dim 6 with 4 heads (24) is wider than emb_dim (16), as in Qwen3.
CFG = {"vocab_size": 40, "context_length": 16, "emb_dim": 16, "n_heads": 4, "n_layers": 2, "hidden_dim": 24,
       "head_dim": 6, "qk_norm": True, "n_kv_groups": 2, "rope_base": 1_000_000.0, "dtype": torch.float32}
# head_dim None: emb_dim // n_heads; no QK-norm; a small base, so that every pair of dimensions turns.
CFG_PLAIN = {**CFG, "head_dim": None, "qk_norm": False, "n_kv_groups": 1, "rope_base": 500.0}

ATTENTION_PARTS = ("RMSNorm", "apply_rope")
BLOCK_PARTS = ("GroupedQueryAttention", "FeedForward", "RMSNorm")
MODEL_PARTS = ("TransformerBlock", "RMSNorm", "compute_rope_params")

# Tests that must run the student's own parts together, and why (tests/test_fairness.py).
PARTS_FIT = {"test_tiny_qwen3_logits": "it loads the tiny Qwen3 checkpoint through the student's own loader into "
                                       "the student's own model and compares the logits with transformers': "
                                       "whether the parts, the names and the loader fit together"}

HINT_RMS = ("RMSNorm divides each vector by the square root of the mean of its squares plus eps (no mean is "
            "subtracted, unlike LayerNorm), then multiplies by scale (and adds shift when bias=True); Qwen3's "
            "default eps is 1e-6. With qwen3_compatible, compute in float32 and return the input's dtype.")
HINT_FF = ("the SiLU-gated feed-forward network: SiLU of the gate (fc1) times the up projection (fc2), then the "
           "down projection (fc3).")
HINT_TABLES = ("inverse frequency i (for i = 0 .. head_dim/2 - 1) is theta_base ** (-2i / head_dim); the angle of "
               "position p is p times it; the head_dim/2 angles are written twice (first half, second half), then "
               "cos and sin are taken. Each table is (context_length, head_dim).")
HINT_ROPE = ("split the last dimension into halves x1 and x2; the rotated vector is x * cos + (-x2, x1) * sin, "
             "with the tables cut to the first seq_len rows and broadcast over batch and heads.")
HINT_GQA = ("queries: num_heads heads; keys and values: num_kv_groups heads, each of head_dim (given, or "
            "d_in // num_heads); RoPE on queries and keys only; each key/value head repeated for its group of "
            "group_size query heads along the heads dimension (dim 1 of (b, heads, T, head_dim)); the mask, "
            "the scaling by sqrt(head_dim), the softmax, the heads combined and out_proj. Your attention ran with "
            "correct RMSNorm and apply_rope here.")
HINT_QK_NORM = ("with qk_norm, q_norm and k_norm are RMSNorm(head_dim, eps=1e-6): each head's queries and keys are "
                "normalised over head_dim after the split into heads and before apply_rope.")
HINT_BLOCK = ("pre-norm, no dropout: x plus the attention of norm1(x) (with mask, cos and sin), then that plus the "
              "feed-forward network of its norm2. Your block ran with correct parts here: the difference comes from "
              "your forward.")
HINT_MODEL = ("token embeddings (no position embedding: RoPE does that), each block with the causal mask and the "
              "cos and sin buffers computed from head_dim (or emb_dim // n_heads), cfg['rope_base'] and "
              "cfg['context_length'], the final RMSNorm, the output head. Your model ran with correct blocks here.")
HINT_LOAD = ("each checkpoint tensor goes into the parameter the notebook's table names, for every layer: q_proj, "
             "k_proj, v_proj, o_proj into W_query, W_key, W_value, out_proj; q_norm and k_norm into the attention's "
             "q_norm.scale and k_norm.scale; input_layernorm into norm1, post_attention_layernorm into norm2; "
             "gate_proj, up_proj, down_proj into fc1, fc2, fc3; model.norm into final_norm.")
HINT_TIE = ("a checkpoint without lm_head.weight has its head tied to the token embedding: make out_head use "
            "tok_emb's weight; with lm_head.weight, copy that into out_head.")
HINT_WHOLE = ("the components' tests say where to look first; if they all pass, check how the model hands mask, "
              "cos and sin to the blocks, and the loader's names.")

REPEAT_ERRORS = error_mentions("must match the size", "size of tensor", hint="repeat each key and value head "
                               "along the heads dimension (dim 1 of (b, num_kv_groups, T, head_dim)), "
                               "group_size times, so that keys and values have num_heads heads like the queries.")
HINT_WIDTH = "q_norm and k_norm normalise each head's vector: they are RMSNorm(head_dim), not RMSNorm(d_in)."


def qk_norm_width(record) -> str | None:
    """The reference's q_norm or k_norm scale (head_dim entries) did not fit the student's: a norm over d_in."""
    return HINT_WIDTH if any(f"size mismatch for {name}.scale" in record.message for name in ("q_norm", "k_norm")) \
        else None


# -- probes (run in the worker) ----------------------------------------------------------------------------------

@probe(returns=ListOf(length="inputs"))
def module_outputs(student, stand_ins, class_name, init, state, inputs):
    """The student's class built with `init` (its parts in `stand_ins` replaced by correct ones), loaded with the
    reference's parameters `state`, run without gradients on each list of arguments in `inputs`."""
    from probe_kit.parts import load_weights
    from probe_kit.qwen3_parts import on_stand_ins

    with on_stand_ins(student, stand_ins):
        module = load_weights(getattr(student, class_name)(**init).to(DEVICE), state).eval()
        with torch.no_grad():
            return [module(*arguments) for arguments in inputs]


@probe(returns=ListOf(length="inputs"))
def norm_outputs(student, init, state, inputs):
    """The student's RMSNorm(**init) loaded with `state`, on each (x, dtype): x cast to dtype; outputs as they are
    (their dtype is checked)."""
    module = student.RMSNorm(**init).to(DEVICE)
    module.load_state_dict(state)
    with torch.no_grad():
        return [module(x.to(dtype)) for x, dtype in inputs]


@probe(returns=ListOf(length="calls"))
def function_results(student, name, calls):
    """The student's function `name` called with each list of positional arguments in `calls`."""
    function = getattr(student, name)
    return [function(*arguments) for arguments in calls]


@probe(returns=Fields("state", "tied"))
def load_into_stand_in(student, cfg, params):
    """A stand-in Qwen3Model (seeded) filled by the student's load_weights_into_qwen from `params`: .state (its
    state_dict: every parameter, the head included) and .tied (the head is the embedding's parameter)."""
    from probe_kit.qwen3_parts import Qwen3Model

    torch.manual_seed(321)
    model = Qwen3Model(cfg).to(params["model.embed_tokens.weight"].device)  # the worker's device (run_here: here)
    student.load_weights_into_qwen(model, cfg, params)
    return {"state": dict(model.state_dict()), "tied": model.out_head.weight is model.tok_emb.weight}


@probe
def whole_model_logits(student, cfg, params, input_ids):
    """The student's Qwen3Model, built from the student's parts and filled by the student's loader, on input_ids."""
    torch.manual_seed(0)
    model = student.Qwen3Model(cfg).to(DEVICE)
    student.load_weights_into_qwen(model, cfg, params)
    model.to(DEVICE).eval()
    with torch.no_grad():
        return model(input_ids)


# -- the reference's modules and the classic mistakes (trusted side) ---------------------------------------------

def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every norm scale drawn around 1 and every shift around 0: a norm that ignores them shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() == 1:
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(0.3 * noise if name.endswith("shift") else 1.0 + 0.4 * noise)
    return module


def parameters(module: torch.nn.Module) -> dict:
    """The weights the grader sends: parameters only (RoPE's tables are built by the student's own __init__)."""
    return {name: p.detach().clone() for name, p in module.state_dict(keep_vars=True).items()
            if isinstance(p, torch.nn.Parameter)}


def rms(x, scale, shift=None, *, eps=1e-6, mean=False, eps_inside=True):
    """RMSNorm with one mistake switched on: the mean subtracted (LayerNorm without its shift), eps outside the root."""
    x = x.float()
    if mean:
        x = x - x.mean(dim=-1, keepdim=True)
    square = x.pow(2).mean(dim=-1, keepdim=True)
    out = x / (torch.sqrt(square + eps) if eps_inside else torch.sqrt(square) + eps) * scale
    return out if shift is None else out + shift


NORM_MISTAKES = [
    Mistake("a mean subtracted first (LayerNorm's normalisation)", "RMSNorm divides by the root mean square of the "
            "vector itself: no mean is subtracted.", mean=True),
    Mistake("an eps of 1e-5 (Llama's)", "Qwen3's RMSNorm uses eps=1e-6 by default.", eps=1e-5),
    Mistake("eps added outside the square root", "add eps to the mean of the squares, then take the root.",
            eps_inside=False),
]


def gated(ff, x, *, swapped=False, activation=F.silu):
    gate, up = (ff.fc2(x), ff.fc1(x)) if swapped else (ff.fc1(x), ff.fc2(x))
    return ff.fc3(activation(gate) * up)


FF_MISTAKES = [
    Mistake("the gate and the up projection swapped (SiLU of fc2 times fc1)", "fc1 is the gate: SiLU goes on "
            "fc1's output, which multiplies fc2's.", swapped=True),
    Mistake("GELU in place of SiLU", "Qwen3 gates with SiLU (x * sigmoid(x)).", activation=F.gelu),
]


def tables(head_dim, theta_base=10_000, context_length=4096, *, interleaved=False, exponent=2):
    """RoPE's tables with one mistake: the angles interleaved (each one twice in a row), or frequencies
    theta_base ** (-i / head_dim) (exponent=1)."""
    inv_freq = 1.0 / theta_base ** (exponent * torch.arange(head_dim // 2).float() / head_dim)
    angles = torch.arange(context_length).float()[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(2, dim=1) if interleaved else torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


TABLE_MISTAKES = [
    Mistake("the angles interleaved (each angle twice in a row)", "write the head_dim/2 angles for the first half, "
            "then the same angles again for the second half (torch.cat along dim 1): apply_rope pairs dimension i "
            "with i + head_dim/2.", interleaved=True),
    Mistake("frequencies theta_base ** (-i / head_dim)", "the exponent steps by 2 / head_dim: use the even "
            "indices 0, 2, 4, ... divided by head_dim.", exponent=1),
]


def rotated(x, cos, sin, *, halves="right", sign=1):
    """apply_rope with one mistake: the wrong halves turned ((x2, -x1) in place of (-x2, x1)), pairs of
    neighbouring dimensions (0 with 1, 2 with 3, ...), or the rotation the other way (sign=-1)."""
    tokens, half = x.shape[2], x.shape[-1] // 2
    cos, sin = cos[:tokens], sin[:tokens]
    if halves == "neighbours":
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        turned = torch.stack([-x_odd, x_even], dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., :half], x[..., half:]
        turned = torch.cat([x2, -x1], dim=-1) if halves == "wrong" else torch.cat([-x2, x1], dim=-1)
    return x * cos + sign * turned * sin


ROPE_MISTAKES = [
    Mistake("the wrong halves rotated (x2, -x1) in place of (-x2, x1)", "the vector turned by a quarter turn puts "
            "minus the SECOND half first, then the first half.", halves="wrong"),
    Mistake("pairs of neighbouring dimensions (0 with 1, 2 with 3, ...)", "Qwen3's checkpoints pair dimension i "
            "with i + head_dim/2 (the split-halves layout).", halves="neighbours"),
]


def attention_with(att, x, mask, cos, sin, *, values_turned=False, tiled=False, qk_norm="before"):
    """The reference attention's forward with one mistake: RoPE on the values too, key/value heads tiled
    (repeat) instead of repeated in place (repeat_interleave), QK-norm missing or after RoPE."""
    b, tokens, _ = x.shape

    def heads(t, count):
        return t.view(b, tokens, count, att.head_dim).transpose(1, 2)

    queries = heads(att.W_query(x), att.num_heads)
    keys = heads(att.W_key(x), att.num_kv_groups)
    values = heads(att.W_value(x), att.num_kv_groups)
    if att.q_norm is not None and qk_norm == "before":
        queries, keys = att.q_norm(queries), att.k_norm(keys)
    queries, keys = ref.apply_rope(queries, cos, sin), ref.apply_rope(keys, cos, sin)
    if values_turned:
        values = ref.apply_rope(values, cos, sin)
    if att.q_norm is not None and qk_norm == "after":
        queries, keys = att.q_norm(queries), att.k_norm(keys)
    if tiled:
        keys, values = keys.repeat(1, att.group_size, 1, 1), values.repeat(1, att.group_size, 1, 1)
    else:
        keys = keys.repeat_interleave(att.group_size, dim=1)
        values = values.repeat_interleave(att.group_size, dim=1)
    scores = (queries @ keys.transpose(2, 3)).masked_fill(mask, -torch.inf) / att.head_dim**0.5
    context = (torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(b, tokens, att.d_out)
    return att.out_proj(context)


GQA_MISTAKES = [
    Mistake("RoPE applied to the values too", "rotate the queries and the keys only: the values carry content, "
            "not positions.", values_turned=True),
    Mistake("key and value heads tiled (repeat) instead of repeated in place (repeat_interleave)", "query head h "
            "uses key/value head h // group_size: repeat each key/value head group_size times in a row "
            "(repeat_interleave along dim 1).", tiled=True),
]
QK_NORM_MISTAKES = [
    Mistake("attention without QK-norm", "with qk_norm, apply q_norm to the queries and k_norm to the keys, per "
            "head, before RoPE.", qk_norm="none"),
    Mistake("QK-norm applied after RoPE", "normalise the queries and the keys BEFORE apply_rope: RoPE rotates the "
            "normalised vectors.", qk_norm="after"),
    *GQA_MISTAKES,
]


def block_with(block, x, mask, cos, sin, *, ff_shortcut=True, post_norm=False):
    """The reference block with one mistake: no shortcut around the feed-forward network, or the norms after the
    sub-blocks (post-norm)."""
    if post_norm:
        h = block.norm1(x + block.att(x, mask, cos, sin))
        return block.norm2(h + block.ff(h))
    h = x + block.att(block.norm1(x), mask, cos, sin)
    out = block.ff(block.norm2(h))
    return out + h if ff_shortcut else out


BLOCK_MISTAKES = [
    Mistake("a block without the shortcut around the feed-forward network", "add the feed-forward network's input "
            "(before norm2) back to its output.", ff_shortcut=False),
    Mistake("norms after the sub-blocks (post-norm)", "Qwen3 normalises each sub-block's INPUT (pre-norm): "
            "x + att(norm1(x)).", post_norm=True),
]


def model_with(model, idx, *, rope_base=None, final_norm=True, causal=True):
    """The reference model with one mistake: RoPE's tables with another base, no final norm, no causal mask."""
    cos, sin = model.cos, model.sin
    if rope_base is not None:
        head_dim = model.cfg["head_dim"] or model.cfg["emb_dim"] // model.cfg["n_heads"]
        cos, sin = ref.compute_rope_params(head_dim, rope_base, model.cfg["context_length"])
    tokens = idx.shape[1]
    mask = torch.ones(tokens, tokens, dtype=torch.bool).triu(1) if causal else torch.zeros(tokens, tokens).bool()
    x = model.tok_emb(idx)
    for block in model.trf_blocks:
        x = block(x, mask, cos, sin)
    return model.out_head(model.final_norm(x) if final_norm else x)


MODEL_MISTAKES = [
    Mistake("RoPE's tables with the default base 10,000 (cfg['rope_base'] not passed)", "pass cfg['rope_base'] "
            "as theta_base to compute_rope_params: Qwen3's base is 1,000,000.", rope_base=10_000),
    Mistake("a model without the final norm", "apply final_norm before the output head.", final_norm=False),
    Mistake("a model without the causal mask", "hand the blocks torch.triu of ones above the diagonal, as bool.",
            causal=False),
]


# -- section 1: RMSNorm ---------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("RMSNorm")
def test_rms_norm(submission):
    """RMSNorm against the reference: the default eps (1e-6) on ordinary and on tiny vectors (where eps matters),
    a given eps, bias=True with its shift, and a bfloat16 input (computed in float32, returned in bfloat16)."""
    x = torch.cat([randn(1, 2, 3, 16), 1e-3 * randn(2, 2, 3, 16)], dim=1)  # (2, 6, 16): rows 3..5 are tiny
    for index, init in enumerate(({"emb_dim": 16}, {"emb_dim": 16, "eps": 1e-4, "bias": True})):
        norm = randomised(reference_module(ref.RMSNorm, 10 + index, **init), 11 + index)
        inputs = [(x, torch.float32), (x, torch.bfloat16)]
        with explain_errors(state_dict_mismatch):
            got = submission.run(norm_outputs, init=init, state=norm.state_dict(), inputs=inputs)
        what = f"RMSNorm({', '.join(f'{k}={v}' for k, v in init.items())}) on (2, 6, 16)"
        eps = init.get("eps", 1e-6)
        expect_close(got[0], norm(x), what=f"{what}, half of the vectors tiny (about 0.001)", hint=HINT_RMS,
                     mistakes=NORM_MISTAKES, mistaken=partial(rms, x, norm.scale, norm.shift, eps=eps))
        expect_true(isinstance(got[1], torch.Tensor) and got[1].dtype == torch.bfloat16,
                    what=f"{what} on a bfloat16 input", problem=f"returned {getattr(got[1], 'dtype', got[1])}.",
                    hint="cast the result back to the input's dtype (x.dtype, taken before the float32 cast).")
        expect_close(got[1].float(), norm(x.to(torch.bfloat16)).float(), what=f"{what} on a bfloat16 input",
                     hint=HINT_RMS, atol=2e-2, rtol=2e-2)


# -- section 2: the feed-forward network -------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("FeedForward")
def test_feed_forward(submission):
    """FeedForward against the reference: fc3(silu(fc1(x)) * fc2(x)), for two widths."""
    for index, cfg in enumerate(({"emb_dim": 16, "hidden_dim": 24}, {"emb_dim": 6, "hidden_dim": 10})):
        cfg = {**cfg, "dtype": torch.float32}
        ff = reference_module(ref.FeedForward, 20 + index, cfg=cfg)
        x = randn(21 + index, 2, 5, cfg["emb_dim"])
        with explain_errors(state_dict_mismatch):
            got = submission.run(module_outputs, stand_ins=(), class_name="FeedForward", init={"cfg": cfg},
                                 state=parameters(ff), inputs=[[x]])
        expect_close(got[0], ff(x), what=f"FeedForward (emb_dim {cfg['emb_dim']}, hidden_dim {cfg['hidden_dim']}) "
                     "on (2, 5, emb_dim)", hint=HINT_FF, mistakes=FF_MISTAKES,
                     mistaken=partial(gated, ff, x))


# -- section 3: rotary position embeddings -----------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("compute_rope_params")
def test_compute_rope_params(submission):
    """compute_rope_params against the reference: Qwen3's base for head_dim 8, a small base, and the defaults
    (base 10,000, 4096 positions)."""
    calls = [[8, 1_000_000.0, 16], [6, 50.0, 5], [4]]
    got = submission.run(function_results, name="compute_rope_params", calls=calls)
    for arguments, tables_got in zip(calls, got):
        expected = ref.compute_rope_params(*arguments)
        what = f"compute_rope_params({', '.join(map(str, arguments))})"
        expect_true(isinstance(tables_got, (tuple, list)) and len(tables_got) == 2, what=what,
                    problem=f"returned {type(tables_got).__name__}, not the pair (cos, sin).", hint=HINT_TABLES)
        for part, mine, theirs in zip(("cos", "sin"), tables_got, expected):
            expect_close(mine, theirs, what=f"{what}: {part}", hint=HINT_TABLES, atol=1e-5, rtol=1e-5,
                         mistakes=TABLE_MISTAKES,
                         mistaken=lambda part=part, arguments=arguments, **change:
                         tables(*arguments, **change)[0 if part == "cos" else 1])


@pytest.mark.points(2)
@pytest.mark.runs("apply_rope")
def test_apply_rope(submission):
    """apply_rope against the reference, with tables longer than the sequence (the first seq_len rows are used),
    for head_dim 8 and 6."""
    calls = []
    for index, (shape, base) in enumerate((((2, 3, 5, 8), 100.0), ((1, 2, 7, 6), 20.0))):
        cos, sin = ref.compute_rope_params(shape[-1], base, 12)
        calls.append([randn(30 + index, *shape), cos, sin])
    got = submission.run(function_results, name="apply_rope", calls=calls)
    for (x, cos, sin), mine in zip(calls, got):
        expect_close(mine, ref.apply_rope(x, cos, sin), what=f"apply_rope on x of shape {tuple(x.shape)} with "
                     "tables of 12 positions", hint=HINT_ROPE, mistakes=ROPE_MISTAKES,
                     mistaken=lambda x=x, cos=cos, sin=sin, **change: rotated(x, cos, sin, **change))


# -- section 4: grouped-query attention --------------------------------------------------------------------------

def check_attention(submission, init, seed, batch, tokens, *, what, hint, mistakes, base=100.0):
    att = randomised(reference_module(ref.GroupedQueryAttention, seed, **init), seed + 1)
    head_dim = att.head_dim
    cos, sin = ref.compute_rope_params(head_dim, base, 16)
    x = randn(seed + 2, batch, tokens, init["d_in"])
    mask = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
    with explain_errors(qk_norm_width, state_dict_mismatch, REPEAT_ERRORS):
        got = submission.run(module_outputs, stand_ins=ATTENTION_PARTS, class_name="GroupedQueryAttention",
                             init=init, state=parameters(att), inputs=[[x, mask, cos, sin]])
    expect_close(got[0], att(x, mask, cos, sin), what=f"{what}: GroupedQueryAttention({init}) on "
                 f"{tuple(x.shape)}", hint=hint, mistakes=mistakes,
                 mistaken=lambda **change: attention_with(att, x, mask, cos, sin, **change))


@pytest.mark.points(3)
@pytest.mark.runs("GroupedQueryAttention")
@pytest.mark.stand_ins(*ATTENTION_PARTS)
def test_grouped_query_attention(submission):
    """GroupedQueryAttention without QK-norm against the reference: 4 query heads sharing 2 key/value heads with
    head_dim given (wider than d_in), 6 heads in 3 groups with head_dim from d_in, and one group for all heads
    (run with correct RMSNorm and apply_rope in place of yours)."""
    cases = [({"d_in": 16, "num_heads": 4, "num_kv_groups": 2, "head_dim": 6}, 2, 7),
             ({"d_in": 12, "num_heads": 6, "num_kv_groups": 3}, 1, 5),
             ({"d_in": 8, "num_heads": 2, "num_kv_groups": 1, "head_dim": 4}, 3, 4)]
    for index, (init, batch, tokens) in enumerate(cases):
        check_attention(submission, init, 40 + 10 * index, batch, tokens, what="without QK-norm", hint=HINT_GQA,
                        mistakes=GQA_MISTAKES)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_grouped_query_attention")
@pytest.mark.runs("GroupedQueryAttention")
@pytest.mark.stand_ins(*ATTENTION_PARTS)
def test_gqa_qk_norm(submission):
    """GroupedQueryAttention with qk_norm=True against the reference: q_norm and k_norm (random scales) over head_dim
    on each head's queries and keys, before RoPE (run with correct RMSNorm and apply_rope in place of yours)."""
    cases = [({"d_in": 16, "num_heads": 4, "num_kv_groups": 2, "head_dim": 6, "qk_norm": True}, 2, 7),
             ({"d_in": 12, "num_heads": 3, "num_kv_groups": 3, "head_dim": 8, "qk_norm": True}, 1, 6)]
    for index, (init, batch, tokens) in enumerate(cases):
        check_attention(submission, init, 70 + 10 * index, batch, tokens, what="with QK-norm", hint=HINT_QK_NORM,
                        mistakes=QK_NORM_MISTAKES)


# -- section 5: the transformer block ----------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_transformer_block(submission):
    """TransformerBlock against the reference, with and without QK-norm: pre-norm, two shortcuts, no dropout (run
    with a correct attention, feed-forward network and RMSNorm in place of yours)."""
    for index, cfg in enumerate((CFG, CFG_PLAIN)):
        block = randomised(reference_module(ref.TransformerBlock, 100 + index, cfg=cfg), 101 + index)
        head_dim = cfg["head_dim"] or cfg["emb_dim"] // cfg["n_heads"]
        cos, sin = ref.compute_rope_params(head_dim, 100.0, cfg["context_length"])
        x = 2 * randn(102 + index, 2, 6, cfg["emb_dim"])
        mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
        with explain_errors(state_dict_mismatch):
            got = submission.run(module_outputs, stand_ins=BLOCK_PARTS, class_name="TransformerBlock",
                                 init={"cfg": cfg}, state=parameters(block), inputs=[[x, mask, cos, sin]])
        expect_close(got[0], block(x, mask, cos, sin), what=f"TransformerBlock (qk_norm={cfg['qk_norm']}) on "
                     f"{tuple(x.shape)}", hint=HINT_BLOCK, mistakes=BLOCK_MISTAKES,
                     mistaken=partial(block_with, block, x, mask, cos, sin))


# -- section 6: the model ---------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("Qwen3Model")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_qwen3_model(submission):
    """Qwen3Model against the reference: its logits for a batch of two and for a whole context, with head_dim
    given and with head_dim None, RoPE's tables from cfg['rope_base'] (run with correct blocks, RMSNorm and
    compute_rope_params in place of yours)."""
    for index, cfg in enumerate((CFG, CFG_PLAIN)):
        model = randomised(reference_module(ref.Qwen3Model, 110 + index, cfg=cfg), 111 + index)
        idx = [randint(112 + index, cfg["vocab_size"], 2, 7), randint(113 + index, cfg["vocab_size"], 1, 16)]
        with explain_errors(state_dict_mismatch):
            got = submission.run(module_outputs, stand_ins=MODEL_PARTS, class_name="Qwen3Model", init={"cfg": cfg},
                                 state=parameters(model), inputs=[[ids] for ids in idx])
        for ids, mine in zip(idx, got):
            expect_close(mine, model(ids), what=f"Qwen3Model logits (head_dim {cfg['head_dim']}, rope_base "
                         f"{cfg['rope_base']:g}) for token ids of shape {tuple(ids.shape)}", hint=HINT_MODEL,
                         mistakes=MODEL_MISTAKES, mistaken=partial(model_with, model, ids))


# -- section 7: loading the checkpoint ---------------------------------------------------------------------------

def book_config(config: dict) -> dict:
    """The book's configuration of the tiny checkpoint, from its transformers configuration."""
    return {"vocab_size": config["vocab_size"], "context_length": config["max_position_embeddings"],
            "emb_dim": config["hidden_size"], "n_heads": config["num_attention_heads"],
            "n_layers": config["num_hidden_layers"], "hidden_dim": config["intermediate_size"],
            "head_dim": config["head_dim"], "qk_norm": True, "n_kv_groups": config["num_key_value_heads"],
            "rope_base": config["rope_parameters"]["rope_theta"], "dtype": torch.float32}


# The tiny config's context, cut for the stand-in used by the loader tests (RoPE's tables are not loaded).
def tiny():
    checkpoint = tiny_checkpoint("qwen3")
    return checkpoint, book_config(checkpoint.config)


def loaded(function, cfg, params):
    """The stand-in model's state after `function` (a loader) ran on the trusted side."""
    return run_here(load_into_stand_in, SimpleNamespace(load_weights_into_qwen=function), cfg=cfg, params=params)


SOURCES = {"att.W_query.weight": "self_attn.q_proj", "att.W_key.weight": "self_attn.k_proj",
           "att.W_value.weight": "self_attn.v_proj", "att.out_proj.weight": "self_attn.o_proj",
           "att.q_norm.scale": "self_attn.q_norm", "att.k_norm.scale": "self_attn.k_norm",
           "norm1.scale": "input_layernorm", "norm2.scale": "post_attention_layernorm",
           "ff.fc1.weight": "mlp.gate_proj", "ff.fc2.weight": "mlp.up_proj", "ff.fc3.weight": "mlp.down_proj"}


def source_of(key: str) -> str:
    """The checkpoint's name for a parameter of the model."""
    fixed = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight",
             "out_head.weight": "lm_head.weight (or, tied, model.embed_tokens.weight)"}
    if key in fixed:
        return fixed[key]
    _, layer, rest = key.split(".", 2)
    return f"model.layers.{layer}.{SOURCES[rest]}.weight"


def mistaken_state(expected: dict, initial: dict, params: dict, *, qk_norms=True, tie=True, gate_up=True,
                   norms=True) -> dict:
    """The state a loader with one mistake leaves: q_norm and k_norm not loaded, the head not tied, gate and up
    swapped, input_layernorm and post_attention_layernorm swapped."""
    state = dict(expected)
    for key in expected:
        if not qk_norms and (".q_norm." in key or ".k_norm." in key):
            state[key] = initial[key]
        if not gate_up and (".fc1." in key or ".fc2." in key):
            other = key.replace("fc1", "FC").replace("fc2", "fc1").replace("FC", "fc2")
            state[key] = expected[other]
        if not norms and (".norm1." in key or ".norm2." in key):
            other = key.replace("norm1", "N").replace("norm2", "norm1").replace("N", "norm2")
            state[key] = expected[other]
    if not tie:
        state["out_head.weight"] = initial["out_head.weight"]
    return state


LOADER_MISTAKES = [
    Mistake("a loader that leaves q_norm and k_norm unloaded", "copy model.layers.{l}.self_attn.q_norm.weight and "
            "k_norm.weight into the attention's q_norm.scale and k_norm.scale.", qk_norms=False),
    Mistake("a loader that does not tie the head", "when the checkpoint has no lm_head.weight, the output head "
            "shares the token embedding's weight.", tie=False),
    Mistake("a loader with gate and up swapped", "gate_proj goes into fc1 (the gated one), up_proj into fc2.",
            gate_up=False),
    Mistake("a loader with the two norms of a block swapped", "input_layernorm is norm1 (before the attention), "
            "post_attention_layernorm is norm2 (before the feed-forward network).", norms=False),
]


def same_state(got, mistaken) -> bool:
    return all(key in got and torch.allclose(got[key].double(), value.double(), atol=1e-6)
               for key, value in mistaken.items())


def check_loaded(submission, params, keys, *, what, hint):
    checkpoint, cfg = tiny()
    got = submission.run(load_into_stand_in, cfg=cfg, params=params)
    expected = loaded(ref.load_weights_into_qwen, cfg, params).state
    initial = loaded(lambda model, cfg, params: None, cfg, params).state
    wrong = [key for key in keys if key not in got.state
             or not torch.allclose(got.state[key].double().cpu(), expected[key].double(), atol=1e-6)]
    if wrong:
        found = which_mistake({k: v.cpu() for k, v in got.state.items()}, LOADER_MISTAKES,
                              lambda **change: mistaken_state(expected, initial, params, **change), matches=same_state)
        named = f"your model holds exactly what {found.did} gives: {found.fix}" if found else hint
        unloaded = [key for key in wrong if key in got.state and torch.equal(got.state[key].cpu(), initial[key])]
        listed = ", ".join(f"{key} (from {source_of(key)})" for key in wrong[:6]) + (" ..." if len(wrong) > 6 else "")
        expect_true(False, what=what, problem=f"{len(wrong)} parameter(s) do not hold their checkpoint tensor: "
                    f"{listed}" + (f"; {len(unloaded)} of them were not loaded at all." if unloaded else "."),
                    hint=named)
    return got


@pytest.mark.points(3)
@pytest.mark.runs("load_weights_into_qwen")
def test_load_weights_into_qwen(submission):
    """load_weights_into_qwen fills every parameter of a correct Qwen3Model (a stand-in) from the tiny Qwen3
    checkpoint: embedding, attention projections, QK-norm scales, both norms, the feed-forward network and the
    final norm of every layer."""
    checkpoint, cfg = tiny()
    keys = [key for key in loaded(ref.load_weights_into_qwen, cfg, checkpoint.weights).state
            if key != "out_head.weight"]
    check_loaded(submission, checkpoint.weights, keys, what="a stand-in Qwen3Model after load_weights_into_qwen "
                 "with the tiny Qwen3 checkpoint", hint=HINT_LOAD)


@pytest.mark.points(1)
@pytest.mark.runs("load_weights_into_qwen")
def test_load_weights_ties_the_head(submission):
    """Without lm_head.weight (the tiny checkpoint, as Qwen3 0.6B) the head is tied to the token embedding; with
    lm_head.weight (a larger Qwen3), the head holds it."""
    checkpoint, cfg = tiny()
    check_loaded(submission, checkpoint.weights, ["out_head.weight"], what="the output head after loading a "
                 "checkpoint without lm_head.weight", hint=HINT_TIE)
    head = randn(120, cfg["vocab_size"], cfg["emb_dim"])
    check_loaded(submission, {**checkpoint.weights, "lm_head.weight": head}, ["out_head.weight"],
                 what="the output head after loading a checkpoint with lm_head.weight", hint=HINT_TIE)


# -- section 8: the whole model, as transformers runs it ----------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.depends_on("test_rms_norm", "test_feed_forward", "test_compute_rope_params", "test_apply_rope",
                        "test_grouped_query_attention", "test_gqa_qk_norm", "test_transformer_block",
                        "test_qwen3_model", "test_load_weights_into_qwen", "test_load_weights_ties_the_head")
@pytest.mark.runs("Qwen3Model", "TransformerBlock", "GroupedQueryAttention", "FeedForward", "RMSNorm",
                  "compute_rope_params", "apply_rope", "load_weights_into_qwen")
def test_tiny_qwen3_logits(submission):
    """Your Qwen3Model, built from your parts and loaded through your load_weights_into_qwen from the tiny
    checkpoint (data/tiny-qwen3.safetensors), gives the logits transformers' Qwen3ForCausalLM computes (atol 1e-4)."""
    checkpoint, cfg = tiny()
    with explain_errors(state_dict_mismatch):
        got = submission.run(whole_model_logits, cfg=cfg, params=checkpoint.weights, input_ids=checkpoint.input_ids)
    on_cpu = str(submission.device).startswith("cpu")  # elsewhere: the device's own tolerance
    expect_close(got, checkpoint.logits, what="the logits of the tiny Qwen3 (2 sequences of 12 tokens), compared "
                 "with transformers'", hint=HINT_WHOLE, atol=1e-4 if on_cpu else None, rtol=1e-4 if on_cpu else None)
