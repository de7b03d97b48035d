"""Public checks of the chapter 4 bonus (a KV cache for faster generation), one per hidden grader test.

The worked example is the notebook's own: a sequence fed without the cache, then on a fresh module its first
tokens (the prefill) and the rest one at a time or in chunks, with the cache; the cached outputs, stacked,
must equal the uncached ones. Everything is compared with the student's OWN code: the attention with the
cache against the same module without it, the block and the model with spies in place of their parts (a spy
attention or block records the use_cache it is given), the model's positions through its own embeddings, and
the generation with a small counting model written here (its next id depends on every earlier token and on
its position, so a cache that is not reset, positions that restart, or a prompt that is not cropped all change
the ids). The hidden grader loads a reference's weights into every module and compares with the reference on
other inputs and sizes.
"""

import torch
from torch import nn

from checks import Checks, Class, Function, Interface, expect_close, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("MultiHeadAttention", "(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)",
          methods={"forward": "(x, use_cache=False)", "reset_cache": "()"}),
    Class("TransformerBlock", "(cfg)", methods={"forward": "(x, use_cache=False)"}),
    Class("GPTModel", "(cfg)", methods={"forward": "(in_idx, use_cache=False)", "reset_kv_cache": "()"}),
    Function("generate_text_simple_cached", "(model, idx, max_new_tokens, context_size=None, use_cache=True)"),
)

CHECKS = Checks("ch04_kv_cache", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

SMALL = {"vocab_size": 30, "context_length": 12, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
         "qkv_bias": False}
WEIGHTS = {"W_query.weight", "W_key.weight", "W_value.weight", "out_proj.weight", "out_proj.bias", "mask"}

HINT_ATTENTION = ("section 3.6 (listing 3.5): project x to queries, keys and values, split them into heads, "
                  "scale the scores by the square root of head_dim, mask the future, softmax over the last "
                  "dimension, dropout, combine the heads and apply out_proj. Without the cache nothing else changes.")
HINT_CACHE = ("with use_cache=True, append the new keys and values to the cache along the TOKEN dimension (dim 1 "
              "of (b, num_tokens, num_heads, head_dim)), attend with the new queries over the whole cache, and take "
              "the mask rows of the new tokens' own positions: from ptr_current_pos on, not from 0; then advance "
              "ptr_current_pos by the number of new tokens.")
HINT_STATE = ("register cache_k and cache_v with register_buffer(..., persistent=False): the cache is not a "
              "weight, so it must not appear in the state_dict. reset_cache() empties both (None) and sets "
              "ptr_current_pos back to 0.")
HINT_BLOCK = ("section 4.5 (listing 4.6), plus one change: hand use_cache on to self.att; norm1, ff and norm2 "
              "work on each token alone and take no use_cache.")
HINT_MODEL = ("section 4.6 (listing 4.7): token embeddings plus position embeddings, drop_emb, each block of "
              "self.trf_blocks in turn (an nn.ModuleList: loop over it, handing use_cache on), final_norm, "
              "out_head.")
HINT_POSITIONS = ("with use_cache=True the new tokens come after the cached ones: their positions start at "
                  "current_pos, which then advances by the number of new tokens; without the cache they start at 0.")
HINT_RESET = ("reset_kv_cache() empties the cache of every block's attention (its reset_cache method) and sets "
              "current_pos back to 0.")
HINT_GENERATE = ("in eval mode and without gradients: reset the model's cache, run the prompt's last ctx_len "
                 "tokens once with use_cache=True, then max_new_tokens times pick the argmax of the last "
                 "position's logits (keepdim: (batch, 1)), append it, and feed the model only that new token.")


class ResetCounter(nn.Module):
    """A spy block's attention: counts the reset_cache calls it receives."""

    def __init__(self):
        super().__init__()
        self.resets = 0

    def reset_cache(self):
        self.resets += 1


class Spy(nn.Module):
    """Stands in for a part: records the use_cache it is given, and returns `inner(x)` (x itself without
    `inner`); as a block, its `att` counts the reset_cache calls."""

    def __init__(self, inner=None):
        super().__init__()
        self.inner, self.seen = inner, []
        if inner is None:
            self.att = ResetCounter()

    def forward(self, x, use_cache=False):
        self.seen.append(bool(use_cache))
        return x if self.inner is None else self.inner(x)


def attention(ns, seed=123, context_length=12):
    torch.manual_seed(seed)
    module = ns["MultiHeadAttention"](d_in=8, d_out=8, context_length=context_length, dropout=0.0, num_heads=2)
    require(isinstance(module, nn.Module), "MultiHeadAttention(...) is not a torch.nn.Module.",
            "keep the class statement and the __init__ of the notebook.")
    return module.eval()


def inputs(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def token_ids(seed, batch, tokens, vocab_size=SMALL["vocab_size"]):
    return torch.randint(0, vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def fed_in_pieces(module, x, pieces):
    """`x` fed to `module` with the cache, `pieces` tokens at a time; the outputs, stacked along the tokens."""
    outputs, start = [], 0
    with torch.no_grad():
        for size in pieces:
            outputs.append(module(x[:, start:start + size], use_cache=True))
            start += size
    return torch.cat(outputs, dim=1)


def expect_cached_like_uncached(ns, x, pieces, what):
    full = attention(ns)
    with torch.no_grad():
        expected = full(x)
    got = fed_in_pieces(attention(ns), x, pieces)
    expect_shape(got, tuple(expected.shape), what, "each cached call returns one output row per new token.")
    first = pieces[0]
    expect_close(got[:, :first], expected[:, :first].tolist(), f"{what}: the first cached call (the prefill of "
                 f"{first} token(s)), compared with the output without the cache", "the first cached call, on an "
                 "empty cache, gives what the uncached call gives: its tokens are masked exactly as without the cache.",
                 atol=1e-5)
    expect_close(got, expected.tolist(), f"{what}, compared with the same module's output for the whole sequence "
                 "without the cache", HINT_CACHE, atol=1e-5)


# -- section 1: attention with a cache --------------------------------------------------------------------------

@CHECKS.register("test_attention_without_cache", subject="MultiHeadAttention", error_hint=HINT_ATTENTION,
                 description="MultiHeadAttention without the cache: causal (a later token changes no earlier output), "
                             "the same with use_cache=False, and an uncached call leaves the cache empty")
def check_attention_without_cache(ns):
    att = attention(ns)
    x = inputs(1, 2, 5, 8)
    with torch.no_grad():
        out = att(x)
        again = att(x, use_cache=False)
        changed = x.clone()
        changed[:, -1] += 1.0
        after = att(changed)
    what = "MultiHeadAttention(d_in=8, d_out=8, ...) on (2, 5, 8)"
    expect_shape(out, (2, 5, 8), what, "(b, num_tokens, d_out) out.")
    expect_close(again, out.tolist(), f"{what} with use_cache=False, compared with the default call", HINT_ATTENTION)
    expect_close(after[:, :-1], out[:, :-1].tolist(), f"{what}: the outputs before the last token when only the "
                 "last token changes", "without the cache, mask the future exactly as in chapter 3.")
    with torch.no_grad():
        first_cached = att(x[:, :1], use_cache=True)
    expect_close(first_cached, out[:, :1].tolist(), f"{what}: a cached call on the first token after two uncached "
                 "calls",
                 "an uncached call must neither read nor fill the cache.", atol=1e-5)


@CHECKS.register("test_attention_cache_one_token_at_a_time", subject="MultiHeadAttention", error_hint=HINT_CACHE,
                 description="MultiHeadAttention fed a prompt, then one token at a time with the cache, gives its "
                             "own outputs for the whole sequence (batches of two and of one)")
def check_attention_one_token_at_a_time(ns):
    expect_cached_like_uncached(ns, inputs(2, 2, 6, 8), [3, 1, 1, 1], "3 tokens, then 3 single tokens, cached")
    expect_cached_like_uncached(ns, inputs(3, 1, 5, 8), [1, 1, 1, 1, 1], "a batch of one fed one token at a time")


@CHECKS.register("test_attention_cache_in_chunks", subject="MultiHeadAttention", error_hint=HINT_CACHE,
                 description="MultiHeadAttention fed in chunks of several tokens with the cache gives its own "
                             "outputs for the whole sequence")
def check_attention_in_chunks(ns):
    expect_cached_like_uncached(ns, inputs(4, 2, 9, 8), [4, 3, 2], "chunks of 4, 3 and 2 tokens, cached")


@CHECKS.register("test_attention_reset_cache_and_state_dict", subject="MultiHeadAttention", error_hint=HINT_STATE,
                 description="the cache stays out of MultiHeadAttention's state_dict, and after reset_cache() a "
                             "cached call starts afresh")
def check_attention_reset(ns):
    att = attention(ns)
    x = inputs(5, 1, 4, 8)
    fed_in_pieces(att, x, [3])
    extra = sorted(key for key in att.state_dict() if key not in WEIGHTS)
    expect_equal(extra, [], "entries of the state_dict beyond the weights and the mask, after a cached call",
                 HINT_STATE)
    att.reset_cache()
    with torch.no_grad():
        fresh = att(x, use_cache=True)
        expected = attention(ns)(x)
    expect_close(fresh, expected.tolist(), "a cached call on 4 tokens after one on 3 and reset_cache(), compared "
                 "with the "
                 "output without the cache", HINT_STATE, atol=1e-5)


# -- section 2: the transformer block ---------------------------------------------------------------------------

@CHECKS.register("test_transformer_block_passes_use_cache", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock hands use_cache on to its attention (a spy in its place records it) "
                             "and follows the pre-LayerNorm steps with its own parts")
def check_transformer_block(ns):
    torch.manual_seed(123)
    block = ns["TransformerBlock"](SMALL).eval()
    for name in ("att", "ff", "norm1", "norm2"):
        require(hasattr(block, name), f"TransformerBlock(cfg) has no attribute {name}.",
                "keep the __init__ the notebook gives.")
    spy = Spy(inner=nn.Linear(8, 8))
    block.att = spy
    x = inputs(6, 2, 3, 8)
    with torch.no_grad():
        cached = block(x, use_cache=True)
        plain = block(x)
        h = x + spy.inner(block.norm1(x))
        steps = h + block.ff(block.norm2(h))
    expect_equal(spy.seen, [True, False], "the use_cache values the attention received for block(x, "
                 "use_cache=True), then block(x)", HINT_BLOCK)
    expect_close(plain, steps.tolist(), "TransformerBlock(cfg)(x) with a linear layer as its attention, compared "
                 "with the pre-LayerNorm steps done with its own norm1, norm2 and ff", HINT_BLOCK, atol=1e-5)
    expect_close(cached, steps.tolist(), "the same with use_cache=True", HINT_BLOCK, atol=1e-5)


# -- section 3: the model ---------------------------------------------------------------------------------------

def small_model(ns, spies=False):
    torch.manual_seed(123)
    model = ns["GPTModel"](SMALL)
    require(isinstance(model, nn.Module), "GPTModel(cfg) is not a torch.nn.Module.",
            "keep the class statement and the __init__ of the notebook.")
    if spies:
        model.trf_blocks = nn.ModuleList([Spy() for _ in range(SMALL["n_layers"])])
    return model.eval()


def without_blocks(model, idx, start):
    """The logits of a model whose blocks pass their input through, for tokens at positions start, start+1, ..."""
    positions = torch.arange(start, start + idx.shape[1])
    return model.out_head(model.final_norm(model.tok_emb(idx) + model.pos_emb(positions)))


@CHECKS.register("test_gpt_model_without_cache", subject="GPTModel", error_hint=HINT_MODEL,
                 description="GPTModel without the cache gives the steps of the notebook, recomputed with its own "
                             "layers (its blocks replaced by spies around linear layers), and hands use_cache=False "
                             "to its blocks")
def check_gpt_model_without_cache(ns):
    model = small_model(ns)
    torch.manual_seed(5)
    model.trf_blocks = nn.ModuleList([Spy(inner=nn.Linear(8, 8)) for _ in range(SMALL["n_layers"])])
    idx = token_ids(7, 2, 6)
    with torch.no_grad():
        got = model(idx)
        again = model(idx, use_cache=False)
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(6))
        for block in model.trf_blocks:
            x = block.inner(x)
        steps = model.out_head(model.final_norm(x))
    what = "GPTModel(cfg) on token ids of shape (2, 6), its blocks replaced by linear layers"
    expect_shape(got, (2, 6, SMALL["vocab_size"]), what, "(batch, num_tokens, vocab_size) logits.")
    expect_close(got, steps.tolist(), f"{what}, compared with the steps done with its own layers", HINT_MODEL,
                 atol=1e-5)
    expect_close(again, steps.tolist(), f"{what}, with use_cache=False", HINT_MODEL, atol=1e-5)
    for number, spy in enumerate(model.trf_blocks):
        expect_equal(spy.seen, [False, False], f"the use_cache values block {number} received for two calls "
                     "without the cache", "a call without the cache hands use_cache=False to every block, so that "
                     "they neither fill nor read their caches.")


@CHECKS.register("test_gpt_model_cache_positions", subject="GPTModel", error_hint=HINT_POSITIONS,
                 description="with the cache, GPTModel hands use_cache to its blocks and the positions continue after "
                             "the cached tokens (blocks replaced by spies that pass their input through)")
def check_gpt_model_positions(ns):
    model = small_model(ns, spies=True)
    idx = token_ids(8, 2, 6)
    start = 0
    for size in (3, 1, 2):
        chunk = idx[:, start:start + size]
        with torch.no_grad():
            got = model(chunk, use_cache=True)
            expected = without_blocks(model, chunk, start)
            restarted = without_blocks(model, chunk, 0)
        what = f"GPTModel with the cache: tokens {start} to {start + size - 1}, after {start} cached tokens"
        hint = HINT_POSITIONS
        if start and isinstance(got, torch.Tensor) and got.shape == restarted.shape and torch.allclose(
                got, restarted, atol=1e-5):
            hint = ("your logits are exactly those of positions that restart at 0 for each call: " + HINT_POSITIONS)
        expect_close(got, expected.tolist(), what, hint, atol=1e-5)
        start += size
    for number, spy in enumerate(model.trf_blocks):
        expect_equal(spy.seen, [True, True, True], f"the use_cache values block {number} received",
                     "hand use_cache on to every block.")


@CHECKS.register("test_gpt_model_reset_kv_cache", subject="GPTModel", error_hint=HINT_RESET,
                 description="reset_kv_cache() resets every block's attention, and the positions start at 0 again")
def check_gpt_model_reset(ns):
    model = small_model(ns, spies=True)
    idx = token_ids(9, 1, 4)
    with torch.no_grad():
        model(idx, use_cache=True)
        model.reset_kv_cache()
        got = model(idx[:, :2], use_cache=True)
        expected = without_blocks(model, idx[:, :2], 0)
    expect_equal([spy.att.resets for spy in model.trf_blocks], [1, 1], "the reset_cache calls each block's attention "
                 "received from one reset_kv_cache()", HINT_RESET)
    expect_close(got, expected.tolist(), "GPTModel's first cached call after reset_kv_cache(): its positions",
                 HINT_RESET, atol=1e-5)


# -- section 4: generation ---------------------------------------------------------------------------------------

class CountingModel(nn.Module):
    """A stand-in GPT with a cache: the next id after position p is (the sum of the ids up to p, plus p) modulo
    the vocabulary, so it depends on every earlier token and on the positions. It holds at most
    `context_length` tokens (its pos_emb has that many rows) and records (tokens fed, use_cache) per call."""

    def __init__(self, vocab_size=50, context_length=12):
        super().__init__()
        self.vocab_size = vocab_size
        self.pos_emb = nn.Embedding(context_length, 1)
        self.cached, self.fed = None, []

    def reset_kv_cache(self):
        self.cached = None

    def forward(self, in_idx, use_cache=False):
        self.fed.append((in_idx.shape[1], bool(use_cache)))
        past = self.cached if use_cache and self.cached is not None else in_idx[:, :0]
        sequence = torch.cat([past, in_idx], dim=1)
        require(sequence.shape[1] <= self.pos_emb.num_embeddings, f"the model was asked to hold "
                f"{sequence.shape[1]} tokens, more than its context length {self.pos_emb.num_embeddings}.",
                "reset the model's cache at the start of each generation, and feed at most the last context_size "
                "tokens of the prompt.")
        if use_cache:
            self.cached = sequence
        positions = torch.arange(sequence.shape[1])
        following = (sequence.cumsum(dim=1) + positions) % self.vocab_size  # (batch, tokens)
        new = following[:, past.shape[1]:]
        return nn.functional.one_hot(new, self.vocab_size).float()


def counted(prompt, max_new_tokens, context_size, vocab_size=50):
    """The ids of greedy generation without a cache: the last context_size tokens at every step."""
    idx = prompt
    model = CountingModel(vocab_size)
    for _ in range(max_new_tokens):
        idx = torch.cat([idx, model(idx[:, -context_size:])[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def generate(ns, model, prompt, max_new_tokens, **options):
    with torch.no_grad():
        return ns["generate_text_simple_cached"](model, prompt, max_new_tokens, **options)


@CHECKS.register("test_generate_cached_equals_uncached", subject="generate_text_simple_cached",
                 error_hint=HINT_GENERATE,
                 description="with a counting model, cached generation gives the uncached ids, feeding the prompt "
                             "once and then one token per step; use_cache=False gives the same ids")
def check_generate_equals_uncached(ns):
    prompt = torch.tensor([[3, 4, 5], [7, 1, 2]])
    for use_cache in (True, False):
        model = CountingModel()
        got = generate(ns, model, prompt, 5, use_cache=use_cache)
        what = f"generate_text_simple_cached(model, [[3, 4, 5], [7, 1, 2]], 5, use_cache={use_cache})"
        expect_shape(got, (2, 8), what, "return the prompts followed by the new ids: (batch, n + max_new_tokens).")
        expect_equal(got.tolist(), counted(prompt, 5, 12).tolist(), what, HINT_GENERATE)
        if use_cache:
            require(model.fed[0] == (3, True) and all(step == (1, True) for step in model.fed[1:])
                    and len(model.fed) in (5, 6), f"{what} fed the model {model.fed} ((tokens, use_cache) per "
                    "call).", "with the cache, feed the prompt once, then only the newest token at each step.")
    full = generate(ns, CountingModel(), torch.tensor([[9]]), 11)
    expect_equal(full.tolist(), counted(torch.tensor([[9]]), 11, 12).tolist(),
                 "one token, then 11 new ones: the context of 12 exactly full", HINT_GENERATE)


@CHECKS.register("test_generate_cached_resets_between_prompts", subject="generate_text_simple_cached",
                 error_hint=HINT_GENERATE,
                 description="two generations in a row with the same model: the second gives the ids of its own "
                             "prompt (the cache is reset)")
def check_generate_resets(ns):
    model = CountingModel()
    generate(ns, model, torch.tensor([[1, 2, 3]]), 3)
    second = torch.tensor([[6, 2]])
    got = generate(ns, model, second, 3)
    expect_equal(got.tolist(), counted(second, 3, 12).tolist(), "the second of two generations with one model",
                 "the model keeps its cache between calls: reset it at the start of every cached generation.")


@CHECKS.register("test_generate_cached_crops_the_prompt", subject="generate_text_simple_cached",
                 error_hint=HINT_GENERATE,
                 description="a prompt longer than context_size: only its last context_size tokens are run")
def check_generate_crops(ns):
    model = CountingModel()
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    got = generate(ns, model, prompt, 1, context_size=4)
    what = "generate_text_simple_cached(model, [[1, 2, 3, 4, 5, 6, 7]], 1, context_size=4)"
    expect_equal(got.tolist(), counted(prompt, 1, 4).tolist(), what,
                 "run only the prompt's last context_size tokens (the cache then holds at most those).")
    expect_equal(model.fed[0], (4, True), f"{what}: the first call's (tokens, use_cache)",
                 "run only the prompt's last context_size tokens, with use_cache=True.")
