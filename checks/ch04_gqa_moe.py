"""Public checks of the chapter 4 bonus (grouped-query attention and a mixture of experts), one per hidden test.

Everything is compared with the student's OWN code, with weights the checks set so that the answer is easy to
see: attention whose queries are zero attends evenly to the tokens up to each one, so with out_proj the
identity each head's output is the running mean of its group's values (which shows the grouping and the causal
mask); experts that ignore their input and each output a marker turn the MoE layer's output into its routing
table (checked for its properties: k experts per token, the largest scores, weights that sum to 1); identical
experts make the MoE layer one expert. The block and the model run with spies in place of their parts. The
hidden grader loads a reference's weights into every module and compares with the reference.
"""

import torch
from torch import nn

from checks import Checks, Class, Interface, expect_close, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("GroupedQueryAttention", "(d_in, d_out, dropout, num_heads, num_kv_groups, dtype=None, qkv_bias=False)",
          methods={"forward": "(x, use_cache=False)", "reset_cache": "()"}),
    Class("MoEFeedForward", "(cfg)",
          example={"cfg": {"emb_dim": 8, "hidden_dim": 4, "num_experts": 3, "num_experts_per_tok": 2}},
          attributes=("gate", "fc1", "fc2", "fc3", "num_experts", "num_experts_per_tok"),
          methods={"forward": "(x)"}),
    Class("TransformerBlock", "(cfg)", methods={"forward": "(x, use_cache=False)"}),
    Class("GPTModel", "(cfg)", methods={"forward": "(in_idx, use_cache=False)", "reset_kv_cache": "()"}),
)

CHECKS = Checks("ch04_gqa_moe", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

SMALL = {"vocab_size": 30, "context_length": 12, "emb_dim": 8, "n_heads": 4, "n_kv_groups": 2, "n_layers": 2,
         "drop_rate": 0.0, "qkv_bias": False, "num_experts": 3, "num_experts_per_tok": 2, "hidden_dim": 4}

HINT_GQA = ("project to queries (num_heads heads) and to keys and values (num_kv_groups heads), let each key/value "
            "head serve group_size consecutive query heads (repeat_interleave along the heads dimension), then "
            "chapter 3's causal attention, the heads combined and out_proj applied.")
HINT_SIZES = ("W_key and W_value project to num_kv_groups * head_dim features; __init__ refuses (assert) a "
              "num_kv_groups that does not divide num_heads.")
HINT_CACHE = ("cache the keys and values before repeating them (num_kv_groups heads), along the token dimension, "
              "and mask by the true positions of the new tokens (from ptr_current_pos on).")
HINT_ROUTING = ("take each token's num_experts_per_tok largest router scores (over the experts, the last "
                "dimension), turn those k scores into weights with a softmax, and weight each chosen expert's output.")
HINT_EXPERT = "each expert computes fc3(silu(fc1(x)) * fc2(x)); the layer adds the chosen experts' weighted outputs."
HINT_BLOCK = ("the pre-LayerNorm block of section 4.5 with self.att a GroupedQueryAttention, handed use_cache, and "
              "self.ff a MoEFeedForward when cfg['num_experts'] > 0, else FeedForward.")
HINT_MODEL = ("token plus position embeddings (positions from current_pos on with the cache), drop_emb, each block "
              "with use_cache, final_norm, out_head.")


def inputs(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def attention(ns, num_heads=4, num_kv_groups=2, d_out=8, seed=123):
    torch.manual_seed(seed)
    module = ns["GroupedQueryAttention"](d_in=6, d_out=d_out, dropout=0.0, num_heads=num_heads,
                                         num_kv_groups=num_kv_groups)
    require(isinstance(module, nn.Module), "GroupedQueryAttention(...) is not a torch.nn.Module.",
            "keep the class statement of the notebook.")
    return module.eval()


def expect_running_means(ns, num_heads, num_kv_groups, what):
    """Zero queries and an identity out_proj: head h outputs the running mean of the values of its group."""
    att = attention(ns, num_heads, num_kv_groups)
    with torch.no_grad():
        att.W_query.weight.zero_()
        att.out_proj.weight.copy_(torch.eye(8))
    x = inputs(1, 2, 5, 6)
    with torch.no_grad():
        got = att(x)
        values = att.W_value(x).view(2, 5, num_kv_groups, 8 // num_heads)  # (b, tokens, groups, head_dim)
        means = values.cumsum(dim=1) / torch.arange(1, 6).view(1, 5, 1, 1)
        group_of_head = torch.arange(num_heads) // (num_heads // num_kv_groups)
        expected = means[:, :, group_of_head].reshape(2, 5, 8)
    expect_shape(got, (2, 5, 8), what, "(b, num_tokens, d_out) out.")
    expect_close(got, expected.tolist(), f"{what} with W_query set to 0 and out_proj to the identity (so head h "
                 "returns the running mean of its group's values over the tokens up to each one)", HINT_GQA)


@CHECKS.register("test_gqa_output", subject="GroupedQueryAttention", error_hint=HINT_GQA,
                 description="GroupedQueryAttention: heads 0-1 share group 0 and heads 2-3 group 1, causally "
                             "(zero queries: each head outputs the running mean of its group's values)")
def check_gqa_output(ns):
    expect_running_means(ns, 4, 2, "GroupedQueryAttention(d_in=6, d_out=8, num_heads=4, num_kv_groups=2)")


@CHECKS.register("test_gqa_with_groups_equal_to_heads_is_mha", subject="GroupedQueryAttention", error_hint=HINT_GQA,
                 description="with num_kv_groups == num_heads, each head reads its own keys and values, as in "
                             "multi-head attention")
def check_gqa_mha(ns):
    att = attention(ns, 4, 4)
    expect_equal(tuple(att.W_key.weight.shape), (8, 6), "W_key.weight's shape with 4 groups for 4 heads", HINT_SIZES)
    expect_running_means(ns, 4, 4, "GroupedQueryAttention(d_in=6, d_out=8, num_heads=4, num_kv_groups=4)")


@CHECKS.register("test_gqa_projection_sizes_and_groups", subject="GroupedQueryAttention", error_hint=HINT_SIZES,
                 description="W_key and W_value have num_kv_groups * head_dim outputs, and 3 groups for 4 heads are "
                             "refused")
def check_gqa_sizes(ns):
    att = attention(ns, 4, 2)
    expect_equal(tuple(att.W_key.weight.shape), (4, 6), "W_key.weight's shape for d_in=6, d_out=8, 4 heads, 2 groups",
                 HINT_SIZES)
    expect_equal(tuple(att.W_value.weight.shape), (4, 6), "W_value.weight's shape for the same", HINT_SIZES)
    try:
        attention(ns, 4, 3)
    except Exception:  # noqa: BLE001 - any refusal counts
        return
    require(False, "GroupedQueryAttention(d_in=6, d_out=8, dropout=0.0, num_heads=4, num_kv_groups=3) was built "
            "without an error.", HINT_SIZES)


@CHECKS.register("test_gqa_cache_holds_kv_groups", subject="GroupedQueryAttention", error_hint=HINT_CACHE,
                 description="with the cache, a prompt then single tokens give the module's own output for the "
                             "whole sequence, and cache_k holds num_kv_groups heads")
def check_gqa_cache(ns):
    x = inputs(2, 2, 6, 6)
    with torch.no_grad():
        expected = attention(ns, 4, 2)(x)
        att = attention(ns, 4, 2)
        got = torch.cat([att(x[:, :3], use_cache=True)] + [att(x[:, i:i + 1], use_cache=True) for i in (3, 4, 5)],
                        dim=1)
    expect_close(got, expected.tolist(), "3 tokens then 3 single tokens with the cache, compared with the same "
                 "module's output for the whole sequence without it", HINT_CACHE)
    cache = getattr(att, "cache_k", None)
    require(isinstance(cache, torch.Tensor), "after cached calls, cache_k is not a tensor.", HINT_CACHE)
    expect_equal(cache.numel(), 2 * 2 * 6 * 2, "the number of elements in cache_k after 6 tokens (batch 2, 2 groups, "
                 "head_dim 2)", HINT_CACHE)


def experts(ns, num_experts=4, k=2, emb_dim=8, hidden_dim=3, seed=123):
    torch.manual_seed(seed)
    cfg = {**SMALL, "emb_dim": emb_dim, "hidden_dim": hidden_dim, "num_experts": num_experts,
           "num_experts_per_tok": k}
    module = ns["MoEFeedForward"](cfg)
    require(isinstance(module, nn.Module), "MoEFeedForward(cfg) is not a torch.nn.Module.",
            "keep the class statement of the notebook.")
    return module.eval()


@CHECKS.register("test_moe_routing", subject="MoEFeedForward", error_hint=HINT_ROUTING,
                 description="MoEFeedForward routes each token to its 2 best-scored experts of 4, with weights that "
                             "sum to 1 and follow the scores (experts set to output markers)")
def check_moe_routing(ns):
    moe = experts(ns)
    x = inputs(3, 2, 5, 8)
    x[..., 0] = 1.0
    with torch.no_grad():
        for e in range(4):  # expert e ignores its input and outputs 1 in feature e
            moe.fc1[e].weight.zero_()
            moe.fc1[e].weight[:, 0] = 1.0
            moe.fc2[e].weight.copy_(moe.fc1[e].weight)
            moe.fc3[e].weight.zero_()
            moe.fc3[e].weight[e] = 1.0 / (3 * nn.functional.silu(torch.tensor(1.0)))
        table = moe(x)[..., :4]  # (2, 5, 4): each token's weight for each expert
        scores = moe.gate(x)
    expect_shape(table, (2, 5, 4), "the routing table (the output's first 4 features with marker experts)",
                 HINT_ROUTING)
    chosen = (table.abs() > 1e-6).sum(dim=-1)
    expect_equal(chosen.tolist(), [[2] * 5] * 2, "the number of experts with a nonzero weight, per token", HINT_ROUTING)
    best = scores.topk(2, dim=-1).indices.sort(dim=-1).values
    used = table.abs().topk(2, dim=-1).indices.sort(dim=-1).values
    expect_equal(used.tolist(), best.tolist(), "the experts each token used (they must be its 2 largest router "
                 "scores)", HINT_ROUTING)
    expect_close(table.sum(dim=-1), [[1.0] * 5] * 2, "the sum of each token's expert weights", HINT_ROUTING)


@CHECKS.register("test_moe_output", subject="MoEFeedForward", error_hint=HINT_EXPERT,
                 description="MoEFeedForward whose experts are all copies of expert 0 gives expert 0's output")
def check_moe_output(ns):
    moe = experts(ns, num_experts=3, k=2, emb_dim=6, hidden_dim=5)
    with torch.no_grad():
        for e in (1, 2):
            for layers in (moe.fc1, moe.fc2, moe.fc3):
                layers[e].weight.copy_(layers[0].weight)
    x = inputs(4, 2, 4, 6)
    with torch.no_grad():
        got = moe(x)
        one = moe.fc3[0](nn.functional.silu(moe.fc1[0](x)) * moe.fc2[0](x))
    expect_close(got, one.tolist(), "MoEFeedForward with 3 identical experts, compared with one expert", HINT_EXPERT)


class Spy(nn.Module):
    """Stands in for a part: records the use_cache it is given and returns inner(x)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, use_cache=False):
        self.seen.append(bool(use_cache))
        return self.inner(x)


def expect_block_steps(ns, cfg, kind, what):
    torch.manual_seed(123)
    block = ns["TransformerBlock"](cfg).eval()
    for name in ("att", "ff", "norm1", "norm2"):
        require(hasattr(block, name), f"TransformerBlock(cfg) has no attribute {name}.",
                "keep the attribute names of the book's block.")
    require(type(block.ff).__name__ == kind, f"{what}: block.ff is a {type(block.ff).__name__}, expected a {kind}.",
            HINT_BLOCK)
    spy = Spy(nn.Linear(8, 8))
    block.att = spy
    x = inputs(5, 2, 3, 8)
    with torch.no_grad():
        cached = block(x, use_cache=True)
        h = x + spy.inner(block.norm1(x))
        steps = h + block.ff(block.norm2(h))
    expect_equal(spy.seen, [True], "the use_cache its attention received for block(x, use_cache=True)", HINT_BLOCK)
    expect_close(cached, steps.tolist(), f"{what} with a linear layer as its attention, compared with the "
                 "pre-LayerNorm steps done with its own parts", HINT_BLOCK)


@CHECKS.register("test_block_with_experts", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock with num_experts=3 uses a MoEFeedForward and the pre-LayerNorm steps")
def check_block_with_experts(ns):
    expect_block_steps(ns, SMALL, "MoEFeedForward", "TransformerBlock with 3 experts")


@CHECKS.register("test_block_without_experts", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock with num_experts=0 uses chapter 4's FeedForward")
def check_block_without_experts(ns):
    expect_block_steps(ns, {**SMALL, "num_experts": 0, "num_experts_per_tok": 0}, "FeedForward",
                       "TransformerBlock without experts")


@CHECKS.register("test_gpt_model", subject="GPTModel", error_hint=HINT_MODEL,
                 description="GPTModel gives the steps of the notebook with its own layers (blocks replaced by spies), "
                             "with positions that continue with the cache")
def check_gpt_model(ns):
    torch.manual_seed(123)
    model = ns["GPTModel"](SMALL).eval()
    torch.manual_seed(5)
    model.trf_blocks = nn.ModuleList([Spy(nn.Linear(8, 8)) for _ in range(SMALL["n_layers"])])
    idx = torch.randint(0, SMALL["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = model(idx)
        cached = torch.cat([model(idx[:, :3], use_cache=True), model(idx[:, 3:], use_cache=True)], dim=1)
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(5))
        for block in model.trf_blocks:
            x = block.inner(x)
        steps = model.out_head(model.final_norm(x))
    what = "GPTModel(cfg) on token ids of shape (2, 5), its blocks replaced by linear layers"
    expect_close(plain, steps.tolist(), what, HINT_MODEL)
    expect_close(cached, steps.tolist(), f"{what}, fed 3 then 2 tokens with the cache", HINT_MODEL)
    expect_equal(model.trf_blocks[0].seen, [False, True, True], "the use_cache values block 0 received", HINT_MODEL)
