"""Grader of the chapter 5 bonus: from GPT to Llama 3.2 (the book's ch05/07_gpt_to_llama).

Each component is compared with the reference on seeded inputs: RMSNorm (with inputs small enough that eps
matters), the SiLU-gated FeedForward, compute_rope_params (the tables, and the frequencies read back from
position 1, in all three bands of Llama 3's scaling), apply_rope and GroupedQueryAttention (with one, two and
four heads per key/value group). When a result is wrong, the grader recomputes it with one classic mistake
switched on (mean subtraction in RMSNorm, eps outside the root, gate and up swapped, RoPE on the values,
interleaved pairs, groups tiled instead of repeated, the scaling missing or its smoothing wrong, ...) and names
the mistake that fits.

A bug costs the points of its component: GroupedQueryAttention runs on a correct apply_rope, the block on a
correct attention, feed-forward and RMSNorm, the model on correct blocks, RMSNorm and compute_rope_params, and
load_weights_into_llama fills a correct model (probe_kit/llama_parts.py, @pytest.mark.stand_ins). The headline
test loads data/tiny-llama32.safetensors (a tiny random LlamaForCausalLM written by transformers) through the
student's own loader into the student's own model, and compares the logits with transformers' (PARTS_FIT).
"""

from functools import partial
from types import SimpleNamespace

import pytest
import torch

from checks.ch05_llama import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import Mistake, error_mentions, expect_close, expect_equal, expect_true, probe
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.grading.probes import run_here
from graders.shared.checkpoints import tiny_checkpoint
from reference import llama as ref

# The notebook's helper that the loader calls (given code in the loader's cell): the loader's tests name it in
# @pytest.mark.runs, so that a helper that hangs costs one timeout.
HELPERS = ("assign",)
PARTS_FIT = {
    "test_tiny_llama32_logits": "the published model's logits come from the student's own model loaded through the "
                                "student's own loader: the test is how the parts fit, as with the real Llama 3.2",
}

LLAMA3_FREQ = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}
# The tiny checkpoint's architecture at a short context (the grader's inputs have at most 10 tokens).
CFG = {"vocab_size": 96, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "hidden_dim": 48,
       "n_kv_groups": 2, "rope_base": 500_000.0, "rope_freq": LLAMA3_FREQ}

ATTENTION_PARTS = ("apply_rope",)
BLOCK_PARTS = ("GroupedQueryAttention", "FeedForward", "RMSNorm")
MODEL_PARTS = ("TransformerBlock", "RMSNorm", "compute_rope_params")

HINT_RMS = ("RMSNorm divides each token's vector by its root mean square, sqrt(mean(x**2) + eps) over the last "
            "dimension (eps inside the root; no mean subtracted, no shift), then multiplies by the learned weight.")
HINT_FF = ("the gated feed-forward: the SiLU of the gate (fc1) times the up projection (fc2), element by element, "
           "then the down projection (fc3); no biases, no GELU.")
HINT_ROPE_PARAMS = ("pair i of a head (dimensions i and i + head_dim/2) turns by theta_base**(-2i/head_dim) radians "
                    "per position; with freq_config, Llama 3's scaling divides the slow frequencies by factor, keeps "
                    "the fast ones and blends the ones between; the angles are duplicated along the last dimension "
                    "(first half, second half) before the cosines and sines.")
HINT_APPLY_ROPE = ("pair the first half of each head's dimensions with the second half: x * cos + rotated * sin, "
                   "where rotated is (-second half, first half), with cos and sin cut to the sequence's length.")
HINT_GQA = ("queries get num_heads heads, keys and values num_kv_groups; RoPE rotates queries and keys (never "
            "values); each key/value head is repeated for its group_size consecutive query heads along the head "
            "dimension (dim 1 of (b, heads, tokens, head_dim)); masked, scaled scores; softmax; out_proj. Your "
            "attention ran with a correct apply_rope here.")
HINT_BLOCK = ("Llama's pre-norm block: add att(norm1(x), mask, cos, sin) to x, then add ff(norm2(.)) to the "
              "result; no dropout. Your block ran with a correct attention, feed-forward and RMSNorm here.")
HINT_MODEL = ("tok_emb, then each block of trf_blocks with a causal mask and the model's cos and sin (computed once "
              "in __init__ from emb_dim // n_heads, rope_base, context_length and rope_freq), final_norm, out_head; "
              "no position embedding layer and no dropout. Your model ran with correct blocks, RMSNorm and "
              "compute_rope_params here.")
HINT_LOADER = ("map the checkpoint's names to the model's attributes: q/k/v/o_proj to W_query/W_key/W_value/"
               "out_proj, gate/up/down_proj to fc1/fc2/fc3, input_layernorm to norm1, post_attention_layernorm to "
               "norm2, model.norm to final_norm, embed_tokens to tok_emb, lm_head (when the file has it) to "
               "out_head. Your loader filled a correct model here.")
HINT_TIED = ("Llama 3.2's files hold no lm_head.weight: the output head shares the token embedding's weight "
             "(weight tying), so set out_head's weight to tok_emb's when the key is missing.")
HINT_LOGITS = ("every component's test passes? Then look at how they fit: the model's configuration (head_dim = "
               "emb_dim // n_heads, rope_base, rope_freq, n_kv_groups), the loader's mapping and the tied head.")

GROUP_ERRORS = error_mentions("must match the size", "size of tensor", hint="keys and values have num_kv_groups "
                              "heads: repeat each along the head dimension (dim 1) group_size times before the "
                              "scores, so they match the num_heads query heads.")
LOADER_ERRORS = error_mentions("Shape mismatch", "checkpoint's tensor has shape", "KeyError", hint=HINT_LOADER)


def book_cfg(cfg: dict) -> dict:
    """The grader's configuration with the book's dtype entry (dtypes are added in the worker)."""
    return {**cfg, "dtype": torch.float32}


# -- probes (run in the worker) ------------------------------------------------------------------------------

@probe(returns=Fields("outputs"))
def run_modules(student, class_name, cases):
    """For each (init, state, x): the student's class built with init, loaded with state (strictly), run on x."""
    outputs = []
    for init, state, x in cases:
        module = getattr(student, class_name)(**init).to(x.device)
        module.load_state_dict(state)
        with torch.no_grad():
            outputs.append(module.eval()(x))
    return {"outputs": outputs}


@probe(returns=Fields("tables"))
def rope_tables(student, cases):
    """For each (args, kwargs): the shapes of the student's (cos, sin) and their first 64 rows."""
    tables = []
    for args, kwargs in cases:
        cos, sin = student.compute_rope_params(*args, **kwargs)
        tables.append({"shapes": [list(cos.shape), list(sin.shape)], "cos": cos[:64].float(), "sin": sin[:64].float()})
    return {"tables": tables}


@probe(returns=Fields("outputs"))
def rotated(student, cases):
    """apply_rope(x, cos, sin) for each (x, cos, sin)."""
    return {"outputs": [student.apply_rope(x, cos, sin) for x, cos, sin in cases]}


@probe(returns=Fields("outputs"))
def attention_outputs(student, stand_ins, cases):
    """For each (init, state, x, cos, sin): the student's GroupedQueryAttention on a stand-in apply_rope."""
    from probe_kit.llama_parts import on_stand_ins

    outputs = []
    with on_stand_ins(student, stand_ins):
        for init, state, x, cos, sin in cases:
            att = student.GroupedQueryAttention(**init).to(x.device)
            att.load_state_dict(state)
            mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device), diagonal=1)
            with torch.no_grad():
                outputs.append(att(x, mask, cos, sin))
    return {"outputs": outputs}


@probe(returns=Fields("outputs"))
def composite_outputs(student, stand_ins, class_name, cfg, state, inputs):
    """The student's TransformerBlock or Llama3Model built on stand-ins of its parts and loaded with `state`;
    a block gets (x, mask, cos, sin) from each input, a model the token ids."""
    from probe_kit.llama_parts import on_stand_ins
    from probe_kit.parts import load_weights

    cfg = {**cfg, "dtype": torch.float32}
    outputs = []
    with on_stand_ins(student, stand_ins):
        module = load_weights(getattr(student, class_name)(cfg).to(inputs[0][0].device), state).eval()
        with torch.no_grad():
            for args in inputs:
                outputs.append(module(*args))
    return {"outputs": outputs}


@probe(returns=Fields("state", "tied"))
def load_into_stand_in(student, cfg, params, seed):
    """A stand-in Llama3Model (built after torch.manual_seed(seed)) filled by the student's
    load_weights_into_llama: .state (its parameters) and .tied (out_head and tok_emb are one tensor)."""
    from probe_kit.llama_parts import Llama3Model

    device = params["model.norm.weight"].device  # the worker's (run_here: the grader's)
    cfg = {**cfg, "dtype": torch.float32}
    torch.manual_seed(seed)
    model = Llama3Model(cfg).to(device)
    student.load_weights_into_llama(model, cfg, params)
    state = {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}
    return {"state": state, "tied": model.out_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()}


@probe(returns=Fields("logits"))
def tiny_llama_logits(student, cfg, params, input_ids):
    """The student's Llama3Model, filled by the student's load_weights_into_llama: its logits for input_ids."""
    cfg = {**cfg, "dtype": torch.float32}
    torch.manual_seed(0)
    model = student.Llama3Model(cfg).to(input_ids.device)
    student.load_weights_into_llama(model, cfg, params)
    model.to(input_ids.device).eval()
    with torch.no_grad():
        return {"logits": model(input_ids)}


# -- the reference with one classic mistake switched on (trusted side) ------------------------------------------

def rms_with(norm, x, *, centred=False, eps_where="inside"):
    """The reference RMSNorm's result, with the mean subtracted first, or eps outside the root, or no eps."""
    if centred:
        x = x - x.mean(dim=-1, keepdim=True)
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)
    if eps_where == "inside":
        scale = torch.rsqrt(mean_square + norm.eps)
    elif eps_where == "outside":
        scale = 1 / (mean_square.sqrt() + norm.eps)
    else:
        scale = torch.rsqrt(mean_square)
    return x * scale * norm.weight


RMS_MISTAKES = [
    Mistake("subtracting the mean first (that is LayerNorm's centring)", "RMSNorm only divides by the root mean "
            "square of x itself: no mean, no shift.", centred=True),
    Mistake("eps added outside the square root", "add eps to the mean square, inside the root: "
            "sqrt(mean(x**2) + eps).", eps_where="outside"),
    Mistake("no eps", "add eps to the mean square before the root: a vector of zeros must not divide by zero.",
            eps_where="none"),
]


def ff_with(ff, x, *, swapped=False, activation="silu"):
    gate, up = (ff.fc2(x), ff.fc1(x)) if swapped else (ff.fc1(x), ff.fc2(x))
    act = torch.nn.functional.silu if activation == "silu" else torch.nn.functional.gelu
    return ff.fc3(act(gate) * up)


FF_MISTAKES = [
    Mistake("the gate and up projections swapped (SiLU of fc2, times fc1)", "fc1 is the gate (gate_proj): the SiLU "
            "goes on fc1's output, which then multiplies fc2's.", swapped=True),
    Mistake("GELU in place of SiLU", "Llama's gate uses SiLU, x * sigmoid(x).", activation="gelu"),
]


def rope_with(head_dim, theta_base=10_000, context_length=4096, freq_config=None, *, scaling=True,
              smoothing="blend", layout="halves"):
    """The reference tables with one mistake: the scaling ignored, the middle band kept or divided or blended the
    wrong way round, or the angles interleaved (0, 0, 1, 1, ...) instead of duplicated in halves."""
    inv_freq = 1.0 / theta_base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if freq_config is not None and scaling:
        factor, low = freq_config["factor"], freq_config["low_freq_factor"]
        high, original = freq_config["high_freq_factor"], freq_config["original_context_length"]
        wavelen = 2 * torch.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        blended = {"blend": (1 - smooth) * inv_freq / factor + smooth * inv_freq,
                   "swapped": smooth * inv_freq / factor + (1 - smooth) * inv_freq,
                   "kept": inv_freq, "divided": inv_freq / factor}[smoothing]
        medium = (wavelen <= original / low) & (wavelen >= original / high)
        inv_freq = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        inv_freq = torch.where(medium, blended, inv_freq)
    angles = torch.arange(context_length).float()[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(2, dim=1) if layout == "interleaved" else torch.cat([angles, angles], dim=1)
    return torch.cos(angles), torch.sin(angles)


ROPE_PARAM_MISTAKES = [
    Mistake("no frequency scaling (freq_config ignored)", "with freq_config, divide the inverse frequencies whose "
            "wavelength is longer than original_context_length / low_freq_factor by factor, and blend those "
            "between the two wavelength limits.", scaling=False),
    Mistake("the middle band's blend the wrong way round", "smooth_factor is 0 at the slow end of the band "
            "(divided by factor) and 1 at the fast end (kept): (1 - smooth) * inv_freq / factor + smooth * inv_freq.",
            smoothing="swapped"),
    Mistake("the middle band left unscaled", "frequencies with wavelengths between the two limits are blended "
            "between divided and kept, not kept.", smoothing="kept"),
    Mistake("the middle band divided by factor", "frequencies with wavelengths between the two limits are blended "
            "between divided and kept, not divided.", smoothing="divided"),
    Mistake("angles interleaved (each frequency twice in a row)", "apply_rope pairs dimension i with i + head_dim/2: "
            "concatenate the angles with themselves (first half, second half).", layout="interleaved"),
]


def rope_apply_with(x, cos, sin, *, pairs="halves", sign=1):
    """The reference rotation, or one that pairs neighbours (2i, 2i+1), or turns the other way."""
    seq_len, half = x.shape[2], x.shape[3] // 2
    cos, sin = cos[:seq_len], sin[:seq_len]
    if pairs == "interleaved":
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((-odd, even), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + sign * rotated * sin


APPLY_ROPE_MISTAKES = [
    Mistake("rotating neighbouring pairs (2i, 2i+1) instead of the two halves", "Llama's checkpoints pair dimension "
            "i with i + head_dim/2: split x into its first and second halves.", pairs="interleaved"),
    Mistake("a rotation the wrong way round", "the rotated vector is (-second half, first half).", sign=-1),
]


def gqa_with(att, x, cos, sin, *, rope_values=False, tiled=False, rope=True):
    """The reference attention with RoPE on the values too, groups tiled ([K1, K2, K1, K2]), or no RoPE."""
    b, tokens, _ = x.shape

    def heads(t, n):
        return t.view(b, tokens, n, att.head_dim).transpose(1, 2)

    turn = partial(rope_apply_with, cos=cos, sin=sin) if rope else (lambda t: t)
    queries, keys = turn(heads(att.W_query(x), att.num_heads)), turn(heads(att.W_key(x), att.num_kv_groups))
    values = heads(att.W_value(x), att.num_kv_groups)
    if rope_values:
        values = turn(values)
    if tiled:
        keys, values = keys.repeat(1, att.group_size, 1, 1), values.repeat(1, att.group_size, 1, 1)
    else:
        keys, values = keys.repeat_interleave(att.group_size, 1), values.repeat_interleave(att.group_size, 1)
    mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)
    scores = (queries @ keys.transpose(2, 3)).masked_fill(mask, -torch.inf) / att.head_dim ** 0.5
    return att.out_proj((torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(b, tokens, att.d_out))


GQA_MISTAKES = [
    Mistake("RoPE applied to the values", "rotate the queries and the keys only: positions enter the scores, the "
            "values carry content.", rope_values=True),
    Mistake("each group's keys and values repeated on the wrong dimension of the groups (tiled: K1, K2, K1, K2)",
            "query heads g*group_size .. (g+1)*group_size - 1 share key/value head g: repeat_interleave along dim 1 "
            "(K1, K1, K2, K2), not repeat.", tiled=True),
    Mistake("no RoPE", "rotate the queries and the keys with apply_rope(..., cos, sin) before the scores.",
            rope=False),
]


# -- section 1: RMSNorm and the feed-forward network ------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("RMSNorm")
def test_rms_norm(submission):
    """RMSNorm: x / sqrt(mean(x**2) + eps) * weight, for inputs of ordinary size and for small ones (where eps
    matters), with the default eps and another."""
    cases = []
    for seed, (emb_dim, eps, scale) in enumerate([(16, 1e-5, 1.0), (16, 1e-5, 1e-3), (10, 1e-2, 0.05)]):
        norm = reference_module(ref.RMSNorm, seed, emb_dim=emb_dim, eps=eps)
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(seed))
        x = scale * (randn(10 + seed, 2, 5, emb_dim) + 0.5)  # a mean away from 0: centring changes the result
        cases.append((norm, {"emb_dim": emb_dim, "eps": eps}, x))
    with explain_errors(state_dict_mismatch):
        got = submission.run(run_modules, class_name="RMSNorm",
                             cases=[(init, norm.state_dict(), x) for norm, init, x in cases])
    for (norm, init, x), out in zip(cases, got.outputs):
        with torch.no_grad():
            expected = norm(x)
        expect_close(out, expected, what=f"RMSNorm({init['emb_dim']}, eps={init['eps']}) on inputs of size about "
                     f"{x.abs().mean():.0e}", hint=HINT_RMS, mistakes=RMS_MISTAKES,
                     mistaken=partial(rms_with, norm, x))


@pytest.mark.points(2)
@pytest.mark.runs("FeedForward")
def test_feed_forward(submission):
    """FeedForward: fc3(silu(fc1(x)) * fc2(x)), with the book's attribute names, without biases."""
    cases = []
    for seed, (emb_dim, hidden_dim) in enumerate([(32, 48), (8, 20)]):
        cfg = {"emb_dim": emb_dim, "hidden_dim": hidden_dim}
        ff = reference_module(ref.FeedForward, 20 + seed, cfg=cfg)
        cases.append((ff, cfg, 2 * randn(30 + seed, 2, 4, emb_dim)))
    with explain_errors(state_dict_mismatch):
        got = submission.run(run_modules, class_name="FeedForward",
                             cases=[({"cfg": book_cfg(cfg)}, ff.state_dict(), x) for ff, cfg, x in cases])
    for (ff, cfg, x), out in zip(cases, got.outputs):
        with torch.no_grad():
            expected = ff(x)
        expect_close(out, expected, what=f"FeedForward with emb_dim={cfg['emb_dim']}, hidden_dim={cfg['hidden_dim']}",
                     hint=HINT_FF, mistakes=FF_MISTAKES, mistaken=partial(ff_with, ff, x))


# -- section 2: rotary position embeddings --------------------------------------------------------------------

ROPE_CASES = [  # (args, kwargs) of compute_rope_params
    ((8,), {"theta_base": 500_000.0, "context_length": 64, "freq_config": LLAMA3_FREQ}),
    ((16,), {"theta_base": 10_000, "context_length": 40}),
    ((32,), {"theta_base": 500_000.0, "context_length": 64,
             "freq_config": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_context_length": 8192}}),
    ((16,), {}),
]


def frequencies(table) -> torch.Tensor:
    """The inverse frequencies a table turns at: the angles of position 1, read back exactly (atan2)."""
    return torch.atan2(table["sin"][1].double(), table["cos"][1].double())


def rope_label(args, kwargs) -> str:
    shown = [str(args[0])] + [f"{k}={v}" for k, v in kwargs.items() if k != "freq_config"]
    return f"compute_rope_params({', '.join(shown)})" + (" with freq_config" if "freq_config" in kwargs else "")


def mistaken_table(name, args, kwargs, rows, **change):
    """The first `rows` rows of the table `name` ("cos", "sin", or "frequencies": the angles of position 1) that
    a mistake gives."""
    cos, sin = rope_with(*args, **{**kwargs, "context_length": rows}, **change)
    tables = {"cos": cos, "sin": sin}
    return frequencies(tables).float() if name == "frequencies" else tables[name]


@pytest.mark.points(2)
@pytest.mark.runs("compute_rope_params")
def test_rope_params(submission):
    """compute_rope_params: cos and sin of shape (context_length, head_dim), the frequencies of each pair (read
    at position 1), Llama 3's scaling in all three bands, and the book's defaults."""
    got = submission.run(rope_tables, cases=ROPE_CASES)
    for (args, kwargs), table in zip(ROPE_CASES, got.tables):
        label = rope_label(args, kwargs)
        expected = run_here(rope_tables, ref, cases=[(args, kwargs)]).tables[0]
        expect_equal(table["shapes"], expected["shapes"], what=f"the shapes of cos and sin from {label}",
                     hint="each is (context_length, head_dim).")
        rows = len(expected["cos"])
        expect_close(frequencies(table).float(), frequencies(expected).float(), what=f"the angles of position 1 (the "
                     f"inverse frequencies) in the tables of {label}", hint=HINT_ROPE_PARAMS, atol=1e-9, rtol=1e-4,
                     mistakes=ROPE_PARAM_MISTAKES,
                     mistaken=partial(mistaken_table, "frequencies", args, kwargs, rows))
        for name in ("cos", "sin"):
            expect_close(table[name], expected[name], what=f"{name} of the first {rows} positions from {label}",
                         hint=HINT_ROPE_PARAMS, mistakes=ROPE_PARAM_MISTAKES,
                         mistaken=partial(mistaken_table, name, args, kwargs, rows))


@pytest.mark.points(2)
@pytest.mark.runs("apply_rope")
def test_apply_rope(submission):
    """apply_rope: each pair (i, i + head_dim/2) of the queries or keys rotated by its position's angle; cos and
    sin longer than the sequence are cut to it."""
    cases = []
    for seed, (shape, base) in enumerate([((2, 3, 7, 8), 10_000), ((1, 2, 5, 16), 100)]):
        cos, sin = ref.compute_rope_params(shape[-1], theta_base=base, context_length=12)
        cases.append((randn(40 + seed, *shape), cos, sin))
    got = submission.run(rotated, cases=cases)
    for (x, cos, sin), out in zip(cases, got.outputs):
        expect_close(out, ref.apply_rope(x, cos, sin), what=f"apply_rope on x of shape {tuple(x.shape)} with cos and "
                     f"sin of shape {tuple(cos.shape)}", hint=HINT_APPLY_ROPE, mistakes=APPLY_ROPE_MISTAKES,
                     mistaken=partial(rope_apply_with, x, cos, sin))


# -- section 3: grouped-query attention, the block and the model ----------------------------------------------

@pytest.mark.points(3)
@pytest.mark.runs("GroupedQueryAttention")
@pytest.mark.stand_ins(*ATTENTION_PARTS)
def test_grouped_query_attention(submission):
    """GroupedQueryAttention: RoPE on queries and keys, each key/value head shared by group_size consecutive query
    heads, causal; with two groups of two heads, one group of four, four groups of one, and three of two (run
    with a correct apply_rope in place of yours)."""
    inits = [{"d_in": 32, "d_out": 32, "num_heads": 4, "num_kv_groups": 2},
             {"d_in": 16, "d_out": 16, "num_heads": 4, "num_kv_groups": 1},
             {"d_in": 16, "d_out": 16, "num_heads": 4, "num_kv_groups": 4},
             {"d_in": 12, "d_out": 48, "num_heads": 6, "num_kv_groups": 3}]
    cases = []
    for seed, init in enumerate(inits):
        att = reference_module(ref.GroupedQueryAttention, 50 + seed, **init)
        cos, sin = ref.compute_rope_params(att.head_dim, theta_base=10_000, context_length=16)
        cases.append((att, init, randn(60 + seed, 2, 6, init["d_in"]), cos, sin))
    with explain_errors(state_dict_mismatch, GROUP_ERRORS):
        got = submission.run(attention_outputs, stand_ins=ATTENTION_PARTS,
                             cases=[(init, att.state_dict(), x, cos, sin) for att, init, x, cos, sin in cases])
    for (att, init, x, cos, sin), out in zip(cases, got.outputs):
        with torch.no_grad():
            expected = gqa_with(att, x, cos, sin)
        expect_close(out, expected, what=f"GroupedQueryAttention with num_heads={init['num_heads']}, num_kv_groups="
                     f"{init['num_kv_groups']}", hint=HINT_GQA, mistakes=GQA_MISTAKES,
                     mistaken=partial(gqa_with, att, x, cos, sin))


def block_with(block, x, mask, cos, sin, *, post_norm=False):
    """The reference block, or one that normalises after adding the shortcut (GPT-1's post-norm)."""
    if post_norm:
        x = block.norm1(x + block.att(x, mask, cos, sin))
        return block.norm2(x + block.ff(x))
    return block(x, mask, cos, sin)


BLOCK_MISTAKES = [
    Mistake("a post-norm block (normalising after the shortcut is added)", "normalise the input of att and of ff "
            "(pre-norm) and add the un-normalised x back.", post_norm=True),
]


@pytest.mark.points(2)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_transformer_block(submission):
    """TransformerBlock: x + att(norm1(x), mask, cos, sin), then + ff(norm2(.)) (run with a correct attention,
    feed-forward and RMSNorm in place of yours)."""
    block = reference_module(ref.TransformerBlock, 70, cfg=CFG)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(71))
    cos, sin = ref.compute_rope_params(8, theta_base=10_000, context_length=16)
    inputs = []
    for seed, tokens in enumerate((7, 1)):
        mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)
        inputs.append((2 * randn(72 + seed, 2, tokens, CFG["emb_dim"]), mask, cos, sin))
    with explain_errors(state_dict_mismatch):
        got = submission.run(composite_outputs, stand_ins=BLOCK_PARTS, class_name="TransformerBlock", cfg=CFG,
                             state=block.state_dict(), inputs=inputs)
    for args, out in zip(inputs, got.outputs):
        with torch.no_grad():
            expected = block(*args)
        expect_close(out, expected, what=f"TransformerBlock output for x of shape {tuple(args[0].shape)}",
                     hint=HINT_BLOCK, mistakes=BLOCK_MISTAKES, mistaken=partial(block_with, block, *args))


def model_with(model, idx, *, causal=True):
    """The reference model, or the same without the causal mask."""
    x = model.tok_emb(idx)
    tokens = idx.shape[1]
    mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1 if causal else tokens)
    for block in model.trf_blocks:
        x = block(x, mask, model.cos, model.sin)
    return model.out_head(model.final_norm(x))


MODEL_MISTAKES = [
    Mistake("a model without the causal mask", "hand each block the causal mask: True above the diagonal, "
            "torch.triu(..., diagonal=1) of shape (num_tokens, num_tokens).", causal=False),
]


@pytest.mark.points(3)
@pytest.mark.runs("Llama3Model")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_llama3_model(submission):
    """Llama3Model: the logits of token embeddings through the blocks (with a causal mask and RoPE tables built
    from the configuration), the final RMSNorm and the head, for inputs of 10 tokens and of 1 (run with correct
    blocks, RMSNorm and compute_rope_params in place of yours)."""
    model = reference_module(ref.Llama3Model, 80, cfg=CFG)
    inputs = [(randint(81, CFG["vocab_size"], 2, 10),), (randint(82, CFG["vocab_size"], 1, 1),)]
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    with explain_errors(state_dict_mismatch):
        got = submission.run(composite_outputs, stand_ins=MODEL_PARTS, class_name="Llama3Model", cfg=CFG,
                             state=state, inputs=inputs)
    for (idx,), out in zip(inputs, got.outputs):
        with torch.no_grad():
            expected = model(idx)
        expect_close(out, expected, what=f"Llama3Model logits for token ids of shape {tuple(idx.shape)}",
                     hint=HINT_MODEL, mistakes=MODEL_MISTAKES, mistaken=partial(model_with, model, idx))


# -- section 4: loading a Hugging Face checkpoint ---------------------------------------------------------------

def checkpoint_params(with_head: bool) -> dict:
    """The tiny checkpoint's tensors; with_head adds an lm_head.weight of its own (an untied file)."""
    params = dict(tiny_checkpoint("llama32").weights)
    if with_head:
        params["lm_head.weight"] = 0.2 * randn(90, CFG["vocab_size"], CFG["emb_dim"])
    return params


def loader_with(model, param_config, params, *, swap=None, tie=True):
    """The reference loader reading a file whose two names of `swap` are exchanged (the student's mapping mixes
    them up), or that never ties the head."""
    params = dict(params)
    if swap is not None:
        first, second = swap
        for layer in range(param_config["n_layers"]):
            a, b = f"model.layers.{layer}.{first}.weight", f"model.layers.{layer}.{second}.weight"
            params[a], params[b] = params[b], params[a]
    if not tie and "lm_head.weight" not in params:
        params["lm_head.weight"] = model.out_head.weight.detach().clone()  # the head left as it was built
    ref.load_weights_into_llama(model, param_config, params)


LOADER_MISTAKES = [
    Mistake("gate_proj and up_proj swapped", "fc1 is the gate (mlp.gate_proj), fc2 the up projection "
            "(mlp.up_proj), fc3 the down projection.", swap=("mlp.gate_proj", "mlp.up_proj")),
    Mistake("input_layernorm and post_attention_layernorm swapped", "norm1, before the attention, is "
            "input_layernorm; norm2, before the feed-forward, is post_attention_layernorm.",
            swap=("input_layernorm", "post_attention_layernorm")),
    Mistake("k_proj and v_proj swapped", "W_key is self_attn.k_proj, W_value is self_attn.v_proj.",
            swap=("self_attn.k_proj", "self_attn.v_proj")),
]


def loaded_with(params, **change) -> dict:
    return run_here(load_into_stand_in, SimpleNamespace(load_weights_into_llama=partial(loader_with, **change)),
                    cfg=CFG_FILE, params=params, seed=91).state


CFG_FILE = {**CFG, "context_length": 16}  # the tiny checkpoint's architecture; the loader needs no long context


@pytest.mark.points(2)
@pytest.mark.runs("load_weights_into_llama", "assign")
def test_load_weights_mapping(submission):
    """load_weights_into_llama: every parameter of a correct Llama3Model holds the checkpoint tensor the book's
    mapping gives it (a file with its own lm_head.weight; run with a correct model in place of yours)."""
    params = checkpoint_params(with_head=True)
    with explain_errors(LOADER_ERRORS):
        got = submission.run(load_into_stand_in, cfg=CFG_FILE, params=params, seed=91)
    expected = loaded_with(params)
    mistaken = {}
    for name, tensor in expected.items():
        if name not in got.state:
            expect_true(False, what=f"the model's parameter {name} after loading", problem="it is missing.",
                        hint=HINT_LOADER)

        def mistaken_value(name=name, **change):
            key = tuple(sorted(change.items()))
            if key not in mistaken:
                mistaken[key] = loaded_with(params, **change)
            return mistaken[key][name]

        expect_close(got.state[name], tensor, what=f"the model's {name} after loading", hint=HINT_LOADER, atol=0,
                     rtol=0, mistakes=LOADER_MISTAKES, mistaken=mistaken_value)


@pytest.mark.points(1)
@pytest.mark.runs("load_weights_into_llama", "assign")
def test_load_weights_ties_head(submission):
    """load_weights_into_llama with a file that has no lm_head.weight (as Llama 3.2's): the output head gets the
    token embedding's weight (run with a correct model in place of yours)."""
    params = checkpoint_params(with_head=False)
    with explain_errors(LOADER_ERRORS):
        got = submission.run(load_into_stand_in, cfg=CFG_FILE, params=params, seed=92)
    embedding = params["model.embed_tokens.weight"]
    untied = Mistake("the head left as it was built (not tied)", HINT_TIED, tie=False)
    expect_close(got.state.get("out_head.weight"), embedding, what="out_head.weight after loading a file without "
                 "lm_head.weight", hint=HINT_TIED, atol=0, rtol=0, mistakes=[untied],
                 mistaken=lambda **change: run_here(load_into_stand_in, SimpleNamespace(
                     load_weights_into_llama=partial(loader_with, **change)), cfg=CFG_FILE, params=params,
                     seed=92).state["out_head.weight"])
    expect_close(got.state.get("tok_emb.weight"), embedding, what="tok_emb.weight after loading", hint=HINT_LOADER,
                 atol=0, rtol=0)


# -- section 5: the whole model from a checkpoint ---------------------------------------------------------------

@pytest.mark.points(4)
@pytest.mark.depends_on("test_rms_norm", "test_feed_forward", "test_rope_params", "test_apply_rope",
                        "test_grouped_query_attention", "test_transformer_block", "test_llama3_model",
                        "test_load_weights_mapping", "test_load_weights_ties_head")
@pytest.mark.runs("Llama3Model", "TransformerBlock", "GroupedQueryAttention", "FeedForward", "RMSNorm",
                  "compute_rope_params", "apply_rope", "load_weights_into_llama", "assign")
def test_tiny_llama32_logits(submission):
    """Your Llama3Model, loaded by your load_weights_into_llama from data/tiny-llama32.safetensors (a tiny random
    LlamaForCausalLM with Llama 3.2's conventions), gives the logits transformers computes (within 1e-4)."""
    tiny = tiny_checkpoint("llama32")
    cfg = {key: value for key, value in ref.config_from_hf(tiny.config).items() if key != "dtype"}
    with explain_errors(LOADER_ERRORS, state_dict_mismatch):
        got = submission.run(tiny_llama_logits, cfg=cfg, params=tiny.weights, input_ids=tiny.input_ids)
    on_cpu = str(submission.device).startswith("cpu")
    expect_close(got.logits, tiny.logits, what="the logits of the tiny Llama 3.2 checkpoint for its two sequences "
                 "of 12 tokens, compared with transformers' LlamaForCausalLM", hint=HINT_LOGITS,
                 atol=1e-4 if on_cpu else None, rtol=1e-4 if on_cpu else None)
