"""Grader of the chapter 4 bonus: grouped-query attention and a mixture-of-experts feed-forward (the book's
ch04/04_gqa and ch04/07_moe).

The components are compared with the reference (reference/gqa_moe.py) on seeded tiny configurations, the
reference's weights loaded into the student's modules by name:

- GroupedQueryAttention: its output (6 heads in 3 groups with biases, and one group: multi-query attention);
  the property that with as many groups as heads it IS chapter 3's multi-head attention (the same weights in
  the reference's MultiHeadAttention, out_proj's bias 0, give the same output); the key/value projections'
  sizes and the refusal of groups that do not divide the heads; and the KV cache: fed in pieces, the output of
  the whole sequence, with a cache that holds num_kv_groups heads (the memory GQA saves), not num_heads.
- MoEFeedForward: the routing, read through the student's own forward with weights that make every expert
  return a marker (expert e adds 1 to output feature e, whatever its input): the output is then each token's
  routing table, the weight of each expert (0 for those not chosen). The book's code computes no per-expert
  load figure, so the routing is what is graded of the router. Then the output with random weights.
- TransformerBlock and GPTModel, on correct stand-ins of their parts (probe_kit/gqa_moe_parts.py): the block
  with experts (MoE) and without (chapter 4's dense FeedForward), the model's logits with and without the cache.

When an output is wrong, the grader recomputes it with one classic mistake switched on (repeat instead of
repeat_interleave, no causal mask, a softmax over all experts, unweighted experts, the gate and up projections
swapped) and names the mistake that fits.
"""

from functools import partial

import pytest
import torch

from checks.ch04_gqa_moe import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, Mistake, error_mentions, expect_close, expect_equal, probe
from course.grading.compare import expect_true
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.worker.runtime.records import ErrorKind
from reference import gqa_moe as ref
from reference import kv_cache

GQA_INIT = {"d_in": 10, "d_out": 12, "dropout": 0.0, "num_heads": 6, "num_kv_groups": 3, "qkv_bias": True}
MQA_INIT = {"d_in": 8, "d_out": 8, "dropout": 0.0, "num_heads": 4, "num_kv_groups": 1}
MHA_INIT = {"d_in": 8, "d_out": 12, "dropout": 0.0, "num_heads": 3, "num_kv_groups": 3}
MOE_CFG = {"emb_dim": 10, "hidden_dim": 6, "num_experts": 5, "num_experts_per_tok": 2}
MOE_CFG_3 = {"emb_dim": 8, "hidden_dim": 5, "num_experts": 4, "num_experts_per_tok": 3}
CFG = {"vocab_size": 31, "context_length": 10, "emb_dim": 12, "n_heads": 4, "n_kv_groups": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": False, "num_experts": 3, "num_experts_per_tok": 2, "hidden_dim": 8}
DENSE_CFG = {**CFG, "num_experts": 0, "num_experts_per_tok": 0, "hidden_dim": 4 * CFG["emb_dim"]}

# The student's parts a composite calls, replaced by correct stand-ins (probe_kit/gqa_moe_parts.py) while the
# test runs it. LayerNorm and FeedForward come from chapter 4's support module: they are not the student's here.
BLOCK_PARTS = ("GroupedQueryAttention", "MoEFeedForward")
MODEL_PARTS = ("TransformerBlock",)

HINT_GQA = ("project x to queries (num_heads heads) and to keys and values (num_kv_groups heads each, of head_dim "
            "features), bring the heads to dimension 1, let every group of group_size consecutive query heads "
            "share one key/value head (repeat_interleave along the heads), then chapter 3's attention: scores "
            "scaled by the square root of head_dim, the future masked, a softmax over the last dimension, the "
            "heads combined and out_proj applied.")
HINT_REPEAT = ("the keys and values are repeated along the heads dimension (dim 1 of (b, num_kv_groups, "
               "num_tokens, head_dim)), group_size times each, so that they line up with the num_heads query heads.")
HINT_MHA = ("with num_kv_groups == num_heads every query head has its own key/value head (group_size 1): the "
            "module must then compute exactly chapter 3's multi-head attention. " + HINT_GQA)
HINT_SIZES = ("W_key and W_value project d_in to num_kv_groups * head_dim features (head_dim = d_out // "
              "num_heads), W_query and out_proj keep d_out; and __init__ refuses (an assert, as the book does, or "
              "an error) a num_kv_groups that does not divide num_heads, since each group must serve the same "
              "number of query heads.")
HINT_CACHE = ("with use_cache=True, append the new keys and values (num_kv_groups heads: repeat them only after "
              "they are cached, when they are used) to cache_k and cache_v along the token dimension, attend with "
              "the new queries over the whole cache, and mask by the true positions (from ptr_current_pos on), "
              "as in the KV-cache assignment.")
HINT_ROUTING = ("the router (self.gate) scores every expert for every token; each token keeps its "
                "num_experts_per_tok largest scores, chosen over the experts (the last dimension of the scores), "
                "and those k scores alone go through a softmax, so that the k weights of a token sum to 1; each "
                "chosen expert's output is multiplied by its weight and the results are added up.")
HINT_MOE = ("each expert e computes fc3[e](silu(fc1[e](x)) * fc2[e](x)) on the tokens routed to it (fc1 is the "
            "gate projection that goes through SiLU, fc2 the up projection); the layer returns, for every token, "
            "the sum of its chosen experts' outputs weighted by the routing weights. " + HINT_ROUTING)
HINT_BLOCK = ("the block of section 4.5 (listing 4.6) with self.att a GroupedQueryAttention (num_kv_groups from "
              "cfg['n_kv_groups']) that is handed use_cache, and self.ff the MoEFeedForward when cfg['num_experts'] "
              "> 0, else chapter 4's FeedForward. Your block ran with a correct GQA and MoE here: the difference "
              "comes from your block.")
HINT_FF_CHOICE = ("the block's feed-forward depends on the configuration: a MoEFeedForward(cfg) when "
                  "cfg['num_experts'] > 0, else chapter 4's FeedForward(cfg).")
HINT_MODEL = ("section 4.6 (listing 4.7) with the KV cache: token plus position embeddings (positions from "
              "current_pos on with the cache), drop_emb, each block of the nn.ModuleList in turn with use_cache, "
              "final_norm, out_head. Your model ran with correct blocks here: the difference comes from your model.")

REPEAT_ERRORS = error_mentions("must match the size", "size of tensor a", hint=HINT_REPEAT)
TOPK_ERRORS = error_mentions("out of range", "out of bounds", "index", hint=HINT_ROUTING)


def feed_forward_choice(record) -> str | None:
    """The reference's block did not load: the student's block built the other kind of feed-forward."""
    if record.kind is not ErrorKind.UNUSABLE or "state_dict" not in record.message:
        return None
    if any(f"ff.{name}" in record.message for name in ("gate", "fc1", "fc2", "fc3", "layers")):
        return HINT_FF_CHOICE
    return None


# -- probes (run in the worker) ------------------------------------------------------------------------------

@probe(returns=Fields("output"))
def attention_output(student, init, state, x):
    """The student's GroupedQueryAttention built with `init`, loaded with `state`, on x (no cache): .output."""
    from probe_kit.parts import load_weights

    module = load_weights(student.GroupedQueryAttention(**init).to(DEVICE), state).eval()
    with torch.no_grad():
        return {"output": module(x)}


@probe(returns=Fields("refused", "key_shape", "value_shape", "query_shape"))
def attention_sizes(student, init, bad_init):
    """The shapes of the student's W_key, W_value and W_query weights built with `init`, and .refused: the error's
    type name when building one with `bad_init` raises (None when it builds)."""
    module = student.GroupedQueryAttention(**init)
    shapes = {name: list(getattr(module, f"W_{name}").weight.shape) for name in ("key", "value", "query")}
    refused = None
    try:
        student.GroupedQueryAttention(**bad_init)
    except Exception as exc:  # noqa: BLE001 - an assert, a ValueError: any refusal counts
        refused = type(exc).__name__
    return {"refused": refused, "key_shape": shapes["key"], "value_shape": shapes["value"],
            "query_shape": shapes["query"]}


@probe(returns=Fields("pieces", "cached_elements"))
def attention_cached(student, init, state, x, pieces):
    """A fresh student attention fed x with the cache, pieces[0] tokens, then pieces[1], ...: .pieces (outputs
    stacked) and .cached_elements (the number of elements in cache_k afterwards; -1 without a cache_k tensor)."""
    from probe_kit.kv_parts import fed_in_pieces
    from probe_kit.parts import load_weights

    module = load_weights(student.GroupedQueryAttention(**init).to(DEVICE), state).eval()
    stacked = fed_in_pieces(module, x, pieces)
    cache = getattr(module, "cache_k", None)
    return {"pieces": stacked, "cached_elements": cache.numel() if isinstance(cache, torch.Tensor) else -1}


@probe(returns=Fields("output"))
def moe_output(student, cfg, state, x):
    """The student's MoEFeedForward(cfg) loaded with `state`, on x: .output."""
    from probe_kit.parts import load_weights

    module = load_weights(student.MoEFeedForward(cfg).to(DEVICE), state).eval()
    with torch.no_grad():
        return {"output": module(x)}


@probe(returns=Fields("plain", "pieces"))
def composite_output(student, stand_ins, class_name, cfg, state, x, pieces):
    """The student's TransformerBlock or GPTModel built on stand-ins of its parts: .plain (forward(x)) and
    .pieces, a fresh one fed x with the cache, pieces[0] tokens, then pieces[1], ... (outputs stacked)."""
    from probe_kit.gqa_moe_parts import on_stand_ins
    from probe_kit.kv_parts import fed_in_pieces
    from probe_kit.parts import load_weights

    with on_stand_ins(student, stand_ins):
        module = load_weights(getattr(student, class_name)(cfg).to(DEVICE), state).eval()
        with torch.no_grad():
            plain = module(x)
        fresh = load_weights(getattr(student, class_name)(cfg).to(DEVICE), state).eval()
        return {"plain": plain, "pieces": fed_in_pieces(fresh, x, pieces)}


# -- the reference's modules and the classic mistakes (trusted side) --------------------------------------------

def parameters(module: torch.nn.Module) -> dict:
    """The weights the grader sends: parameters only (buffers are the student's own)."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def gqa_with(att: ref.GroupedQueryAttention, x, *, interleave=True, masked=True):
    """The reference attention's output without the cache, with one mistake switched on: the key/value heads
    repeated as a whole (repeat: [K0, K1, K0, K1]) instead of each in turn, or no causal mask."""
    b, t, _ = x.shape
    queries = att.W_query(x).view(b, t, att.num_heads, att.head_dim).transpose(1, 2)
    keys = att.W_key(x).view(b, t, att.num_kv_groups, att.head_dim).transpose(1, 2)
    values = att.W_value(x).view(b, t, att.num_kv_groups, att.head_dim).transpose(1, 2)
    if interleave:
        keys, values = keys.repeat_interleave(att.group_size, dim=1), values.repeat_interleave(att.group_size, dim=1)
    else:
        keys, values = keys.repeat(1, att.group_size, 1, 1), values.repeat(1, att.group_size, 1, 1)
    scores = queries @ keys.transpose(2, 3) / att.head_dim ** 0.5
    if masked:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -torch.inf)
    context = torch.softmax(scores, dim=-1) @ values
    return att.out_proj(context.transpose(1, 2).reshape(b, t, att.d_out))


GQA_MISTAKES = [
    Mistake("keys and values repeated with repeat (the groups in turn: K0, K1, K0, K1) instead of repeat_interleave",
            "query head h shares the key/value head h // group_size: repeat each key/value head group_size times "
            "in place (repeat_interleave along the heads: K0, K0, K1, K1).", interleave=False),
    Mistake("attention without the causal mask", "mask the scores of the keys after each query (the future) with "
            "-inf before the softmax.", masked=False),
]


def moe_with(moe: ref.MoEFeedForward, x, *, all_softmax=False, unweighted=False, swap=False, markers=False):
    """The reference MoE's output, computed densely (every expert on every token), with one mistake switched on:
    a softmax over all experts' scores (not renormalised over the top k), the experts' outputs added without
    their weights, or fc1 and fc2 swapped (SiLU on the up projection). markers: every expert's output is the
    marker of the routing probe (expert e gives 1 in feature e), so the result is the routing table."""
    scores = moe.gate(x)  # (batch, tokens, num_experts)
    top_scores, top_experts = scores.topk(moe.num_experts_per_tok, dim=-1)
    if all_softmax:
        top_weights = torch.softmax(scores, dim=-1).gather(-1, top_experts)
    elif unweighted:
        top_weights = torch.ones_like(top_scores)
    else:
        top_weights = torch.softmax(top_scores, dim=-1)
    table = torch.zeros_like(scores).scatter(-1, top_experts, top_weights)  # (batch, tokens, num_experts)
    if markers:
        return torch.nn.functional.pad(table, (0, x.shape[-1] - moe.num_experts))
    first, second = (moe.fc2, moe.fc1) if swap else (moe.fc1, moe.fc2)
    outputs = torch.stack([moe.fc3[e](torch.nn.functional.silu(first[e](x)) * second[e](x))
                           for e in range(moe.num_experts)], dim=-2)  # (batch, tokens, num_experts, emb_dim)
    return (table.unsqueeze(-1) * outputs).sum(dim=-2)


MOE_MISTAKES = [
    Mistake("a softmax over all the experts' scores (the k chosen weights are not renormalised to sum to 1)",
            "keep the top-k scores first (torch.topk over the experts), then apply the softmax to those k scores "
            "only.", all_softmax=True),
    Mistake("experts whose outputs are not weighted (each chosen expert counts fully)", "multiply each chosen "
            "expert's output by its routing weight before adding it to the token's output.", unweighted=True),
    Mistake("experts with fc1 and fc2 swapped (SiLU applied to the up projection)", "the SiLU goes on fc1, the "
            "gate projection: silu(fc1(x)) * fc2(x), then fc3.", swap=True),
]


def moe_config(cfg: dict) -> dict:
    return {**CFG, **cfg}


def marker_state(moe: ref.MoEFeedForward) -> dict:
    """The reference MoE's router with experts that ignore their input: x[..., 0] is 1 in the routing probe's
    inputs, fc1 and fc2 read only it (silu(1) * 1 in every hidden unit), and fc3 turns that into 1 in output
    feature e for expert e. The layer's output is then each token's routing table."""
    state = parameters(moe)
    silu_one = torch.nn.functional.silu(torch.tensor(1.0)).item()
    hidden, emb = moe.fc3[0].weight.shape[1], moe.emb_dim
    for e in range(moe.num_experts):
        reads_first = torch.zeros(hidden, emb)
        reads_first[:, 0] = 1.0
        state[f"fc1.{e}.weight"] = reads_first
        state[f"fc2.{e}.weight"] = reads_first.clone()
        marker = torch.zeros(emb, hidden)
        marker[e] = 1.0 / (silu_one * hidden)
        state[f"fc3.{e}.weight"] = marker
    return state


# -- section 1: grouped-query attention ---------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.runs("GroupedQueryAttention")
def test_gqa_output(submission):
    """GroupedQueryAttention's output equals the reference's: 6 query heads in 3 key/value groups (with qkv_bias),
    and a single group (multi-query attention)."""
    for index, init in enumerate((GQA_INIT, MQA_INIT)):
        att = reference_module(ref.GroupedQueryAttention, 10 + index, **init)
        x = randn(20 + index, 2, 5, init["d_in"])
        with explain_errors(state_dict_mismatch, REPEAT_ERRORS):
            got = submission.run(attention_output, init=init, state=parameters(att), x=x)
        with torch.no_grad():
            expected = att(x)
        expect_close(got.output, expected, what=f"GroupedQueryAttention({init}) on {tuple(x.shape)}", hint=HINT_GQA,
                     mistakes=GQA_MISTAKES, mistaken=partial(gqa_with, att, x))


@pytest.mark.points(2)
@pytest.mark.runs("GroupedQueryAttention")
def test_gqa_with_groups_equal_to_heads_is_mha(submission):
    """With num_kv_groups == num_heads, GroupedQueryAttention is multi-head attention: with the weights of the
    reference's MultiHeadAttention (out_proj's bias 0) it gives that module's output."""
    torch.manual_seed(30)
    mha = kv_cache.MultiHeadAttention(d_in=8, d_out=12, context_length=8, dropout=0.0, num_heads=3).eval()
    with torch.no_grad():
        mha.out_proj.bias.zero_()
    state = {name: p for name, p in parameters(mha).items() if name != "out_proj.bias"}
    x = randn(31, 2, 6, 8)
    with explain_errors(state_dict_mismatch, REPEAT_ERRORS):
        got = submission.run(attention_output, init=MHA_INIT, state=state, x=x)
    with torch.no_grad():
        expected = mha(x)
    gqa = reference_module(ref.GroupedQueryAttention, 0, **MHA_INIT)
    gqa.load_state_dict(state)
    expect_close(got.output, expected, what=f"GroupedQueryAttention({MHA_INIT}) on {tuple(x.shape)}, compared with "
                 "MultiHeadAttention with the same weights", hint=HINT_MHA, mistakes=GQA_MISTAKES,
                 mistaken=partial(gqa_with, gqa, x))


@pytest.mark.points(1)
@pytest.mark.runs("GroupedQueryAttention")
def test_gqa_projection_sizes_and_groups(submission):
    """W_key and W_value project to num_kv_groups * head_dim features (W_query to d_out), and a num_kv_groups that
    does not divide num_heads is refused when the module is built."""
    bad = {**GQA_INIT, "num_heads": 4, "num_kv_groups": 3}
    got = submission.run(attention_sizes, init=GQA_INIT, bad_init=bad)
    d_in, kv_features = GQA_INIT["d_in"], GQA_INIT["num_kv_groups"] * GQA_INIT["d_out"] // GQA_INIT["num_heads"]
    expect_equal(got.key_shape, [kv_features, d_in], what=f"W_key.weight's shape for {GQA_INIT}", hint=HINT_SIZES)
    expect_equal(got.value_shape, [kv_features, d_in], what=f"W_value.weight's shape for {GQA_INIT}",
                 hint=HINT_SIZES)
    expect_equal(got.query_shape, [GQA_INIT["d_out"], d_in], what=f"W_query.weight's shape for {GQA_INIT}",
                 hint=HINT_SIZES)
    expect_true(got.refused is not None, what="GroupedQueryAttention built with num_heads=4, num_kv_groups=3",
                problem="it was built without an error: 3 groups cannot share 4 query heads evenly (num_kv_groups "
                "must divide num_heads).", hint=HINT_SIZES)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_gqa_output")
@pytest.mark.runs("GroupedQueryAttention")
def test_gqa_cache_holds_kv_groups(submission):
    """With use_cache=True, fed a prompt and then one token at a time, GroupedQueryAttention gives the output of
    the whole sequence, and its cache_k holds num_kv_groups heads (not num_heads): the memory GQA saves."""
    att = reference_module(ref.GroupedQueryAttention, 40, **MQA_INIT)
    x = randn(41, 2, 6, MQA_INIT["d_in"])
    pieces = [3, 1, 1, 1]
    with explain_errors(state_dict_mismatch, REPEAT_ERRORS):
        got = submission.run(attention_cached, init=MQA_INIT, state=parameters(att), x=x, pieces=pieces)
    with torch.no_grad():
        expected = att(x)
    expect_close(got.pieces, expected, what=f"GroupedQueryAttention({MQA_INIT}) fed {pieces} tokens with the cache, "
                 "compared with the whole sequence without it", hint=HINT_CACHE)
    head_dim = MQA_INIT["d_out"] // MQA_INIT["num_heads"]
    expected_elements = 2 * MQA_INIT["num_kv_groups"] * 6 * head_dim
    expect_equal(got.cached_elements, expected_elements, what="the number of elements in cache_k after 6 cached "
                 f"tokens (batch 2, num_kv_groups {MQA_INIT['num_kv_groups']}, head_dim {head_dim}; "
                 f"num_heads {MQA_INIT['num_heads']} would give {2 * MQA_INIT['num_heads'] * 6 * head_dim}; -1: no "
                 "cache_k tensor)", hint=HINT_CACHE)


# -- section 2: the mixture of experts ------------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.runs("MoEFeedForward")
def test_moe_routing(submission):
    """MoEFeedForward's routing: each token's top num_experts_per_tok experts (over the router's scores), weighted
    by the softmax of those k scores. Read through forward with experts that output a marker (expert e gives 1
    in feature e), so that the output is each token's routing table (2 of 5 experts, and 3 of 4)."""
    for index, small in enumerate((MOE_CFG, MOE_CFG_3)):
        cfg = moe_config(small)
        moe = reference_module(ref.MoEFeedForward, 50 + index, cfg=cfg)
        x = randn(60 + index, 2, 6, cfg["emb_dim"])
        x[..., 0] = 1.0  # what the marker experts read
        state = marker_state(moe)
        moe.load_state_dict(state)
        with explain_errors(state_dict_mismatch, TOPK_ERRORS):
            got = submission.run(moe_output, cfg=cfg, state=state, x=x)
        with torch.no_grad():
            expected = moe_with(moe, x, markers=True)
        what = (f"the routing table (the output with marker experts; feature e: expert e's weight) of "
                f"MoEFeedForward with {cfg['num_experts']} experts, {cfg['num_experts_per_tok']} per token, on "
                f"{tuple(x.shape)}")
        expect_close(got.output, expected, what=what, hint=HINT_ROUTING, atol=1e-5, rtol=1e-4,
                     mistakes=MOE_MISTAKES[:2], mistaken=partial(moe_with, moe, x, markers=True))


@pytest.mark.points(3)
@pytest.mark.depends_on("test_moe_routing")
@pytest.mark.runs("MoEFeedForward")
def test_moe_output(submission):
    """MoEFeedForward's output equals the reference's with random weights: SiLU-gated experts, weighted by the
    routing (2 of 5 experts, and 3 of 4)."""
    for index, small in enumerate((MOE_CFG, MOE_CFG_3)):
        cfg = moe_config(small)
        moe = reference_module(ref.MoEFeedForward, 70 + index, cfg=cfg)
        x = randn(80 + index, 2, 6, cfg["emb_dim"])
        with explain_errors(state_dict_mismatch, TOPK_ERRORS):
            got = submission.run(moe_output, cfg=cfg, state=parameters(moe), x=x)
        with torch.no_grad():
            expected = moe(x)
        expect_close(got.output, expected, what=f"MoEFeedForward with {cfg['num_experts']} experts, "
                     f"{cfg['num_experts_per_tok']} per token, on {tuple(x.shape)}", hint=HINT_MOE,
                     mistakes=MOE_MISTAKES, mistaken=partial(moe_with, moe, x))


# -- section 3: the block and the model ------------------------------------------------------------------------

def check_composite(submission, class_name, parts, model, cfg, x, pieces, *, what, hint):
    with explain_errors(feed_forward_choice, state_dict_mismatch):
        got = submission.run(composite_output, stand_ins=parts, class_name=class_name, cfg=cfg,
                             state=parameters(model), x=x, pieces=pieces)
    with torch.no_grad():
        expected = model(x)
    expect_close(got.plain, expected, what=f"{what}, without the cache", hint=hint)
    expect_close(got.pieces, expected, what=f"{what}, fed {pieces} tokens with the cache, compared with the whole "
                 "input without it", hint=hint)


@pytest.mark.points(2)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_block_with_experts(submission):
    """TransformerBlock with cfg['num_experts'] > 0: GQA, then the MoE feed-forward, with and without the cache (run
    with a correct GroupedQueryAttention and MoEFeedForward in place of yours)."""
    block = reference_module(ref.TransformerBlock, 90, cfg=CFG)
    x = 2 * randn(91, 2, 5, CFG["emb_dim"])
    check_composite(submission, "TransformerBlock", BLOCK_PARTS, block, CFG, x, [3, 1, 1],
                    what="TransformerBlock with 3 experts", hint=HINT_BLOCK)


@pytest.mark.points(1)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_block_without_experts(submission):
    """TransformerBlock with cfg['num_experts'] == 0: GQA, then chapter 4's dense FeedForward (run with a correct
    GroupedQueryAttention in place of yours)."""
    block = reference_module(ref.TransformerBlock, 92, cfg=DENSE_CFG)
    x = 2 * randn(93, 2, 4, CFG["emb_dim"])
    check_composite(submission, "TransformerBlock", BLOCK_PARTS, block, DENSE_CFG, x, [2, 2],
                    what="TransformerBlock without experts", hint=HINT_BLOCK)


@pytest.mark.points(2)
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model(submission):
    """GPTModel's logits with GQA and MoE blocks, without the cache and fed in pieces with it (run with correct
    blocks in place of yours)."""
    model = reference_module(ref.GPTModel, 100, cfg=CFG)
    with torch.no_grad():
        model.pos_emb.weight.mul_(3)  # positions that matter: position mistakes show clearly
    idx = randint(101, CFG["vocab_size"], 2, 7)
    check_composite(submission, "GPTModel", MODEL_PARTS, model, CFG, idx, [4, 1, 2], what="GPTModel logits",
                    hint=HINT_MODEL)
