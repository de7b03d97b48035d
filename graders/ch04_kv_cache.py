"""Grader of the chapter 4 bonus: a KV cache for faster generation (the book's ch04/03_kv-cache).

Every test compares what the student's code gives WITH the cache (a prompt, then one token at a time, or in
chunks) with what the reference gives for the whole sequence at once, without it: a correct cache changes the
cost, never the result. The reference's weights are loaded into the student's modules by name (parameters
only: the book registers the mask as a non-persistent buffer, chapter 3 as a persistent one, and both are
accepted). When the attention is wrong, the grader recomputes it with one classic mistake switched on (mask
rows that start at 0 for every call, the new tokens attending only to themselves, no mask with the cache) and
names the mistake that fits.

A bug costs the points of its component: the TransformerBlock runs on a correct cached attention, the
GPTModel on correct cached blocks, and generate_text_simple_cached on a correct cached GPT
(probe_kit/kv_parts.py, declared with @pytest.mark.stand_ins). That stand-in GPT refuses to hold more tokens
than its context and records what it is fed, so the grader checks that the generation really uses the cache
(the prompt once, then one token per call). Greedy decoding is exact: the ids must equal those of generation
without the cache.

At the context limit the book's generate_text_simple_cached does not slide its window (it keeps growing the
cache, and fails past the model's context); generation without the cache slides it. Both are accepted where
they differ (a context_size shorter than prompt plus new tokens), and every other case keeps prompt plus new
tokens within the context, up to exactly full. Beyond the book's examples, the tests probe a batch of one and
of several, a one-token prompt, a context exactly full, chunks of several tokens after the prefill, the cache
left out of the state_dict, and state kept from one call (or one prompt) to the next.
"""

from functools import partial
from types import SimpleNamespace

import pytest
import torch

from checks.ch04_kv_cache import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, Mistake, error_mentions, expect_close, expect_equal, probe
from course.grading.compare import expect_true
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.grading.mistakes import name_mistake
from course.grading.probes import run_here
from reference import kv_cache as ref

ATT_INIT = {"d_in": 8, "d_out": 8, "context_length": 12, "dropout": 0.0, "num_heads": 2}
ATT_INIT_BIAS = {"d_in": 6, "d_out": 12, "context_length": 10, "dropout": 0.0, "num_heads": 3, "qkv_bias": True}
CFG = {"vocab_size": 37, "context_length": 12, "emb_dim": 12, "n_heads": 3, "n_layers": 2, "drop_rate": 0.0,
       "qkv_bias": True}

# The student's parts a composite calls, replaced by correct stand-ins (probe_kit/kv_parts.py) while the test
# runs it. LayerNorm and FeedForward come from chapter 4's support module: they are not the student's here.
BLOCK_PARTS = ("MultiHeadAttention",)
MODEL_PARTS = ("TransformerBlock",)

HINT_ATTENTION = ("without the cache the forward is chapter 3's attention (section 3.6, listing 3.5): queries, keys "
                  "and values split into heads, scores scaled by the square root of head_dim, the future masked, a "
                  "softmax over the last dimension, dropout, the heads combined and out_proj applied.")
HINT_CACHE = ("with use_cache=True the new keys and values are appended to the cache along the token dimension "
              "(dim 1 of (b, num_tokens, num_heads, head_dim)), the new queries attend over the whole cache, and "
              "the mask rows are those of the new tokens' positions, from ptr_current_pos on; then ptr_current_pos "
              "advances by the number of new tokens.")
HINT_UNCACHED = ("an uncached call neither reads nor fills the cache (nor moves ptr_current_pos): keep the cache for "
                 "use_cache=True only.")
HINT_STATE = ("the cache is not a weight: register cache_k and cache_v as non-persistent buffers (persistent=False) "
              "so the state_dict holds only the weights (and the mask); reset_cache() empties them and sets "
              "ptr_current_pos back to 0, so the next cached call starts at position 0.")
HINT_BLOCK = ("the block of section 4.5 (listing 4.6), handing use_cache on to self.att (norm1, ff and norm2 take no "
              "use_cache). Your block ran with a correct cached attention here: the difference comes from your "
              "forward.")
HINT_MODEL = ("section 4.6 (listing 4.7): token plus position embeddings, drop_emb, each block of the "
              "nn.ModuleList in turn, final_norm, out_head. Your model ran with correct cached blocks here: the "
              "difference comes from your forward.")
HINT_POSITIONS = ("with use_cache=True the new tokens come after the cached ones: their positions start at "
                  "current_pos, which then advances by the number of new tokens (and every block is handed "
                  "use_cache). Your model ran with correct cached blocks here.")
HINT_RESET = ("reset_kv_cache() empties the cache of every block's attention (through its reset_cache method) and "
              "sets current_pos back to 0, so that the next prompt starts at position 0 with empty caches.")
HINT_GENERATE = ("in eval mode, without gradients: reset the model's cache, run the prompt's last ctx_len tokens "
                 "once with use_cache=True (the prefill), then max_new_tokens times append the argmax of the last "
                 "position's logits (one id per row, kept as (batch, 1)) and feed the model only that new token. "
                 "Your function ran with a correct cached GPT here.")
HINT_FED = ("with use_cache=True, feed the model the prompt once, then only the newest token at each step "
            "(shape (batch, 1)): feeding the whole sequence again is what the cache saves.")

CACHE_ERRORS = error_mentions("Sizes of tensors must match", "must match the size", hint=HINT_CACHE)
OVERFLOW = error_mentions("more than its context length", hint="the stand-in model's cache overflowed: reset the "
                          "model's cache at the start of every generation, and prefill at most the prompt's last "
                          "ctx_len tokens.")


# -- probes (run in the worker) ------------------------------------------------------------------------------

@probe(returns=ListOf(length="calls"))
def attention_calls(student, init, state, x, calls):
    """One student attention called on x's first `tokens` tokens for each (tokens, use_cache) of `calls`, in
    order (use_cache None: the default, forward(x)); the outputs."""
    from probe_kit.parts import load_weights

    module = load_weights(student.MultiHeadAttention(**init).to(DEVICE), state).eval()
    outputs = []
    with torch.no_grad():
        for tokens, use_cache in calls:
            chunk = x[:, :tokens]
            outputs.append(module(chunk) if use_cache is None else module(chunk, use_cache=use_cache))
    return outputs


@probe(returns=ListOf(length="inputs"))
def attention_in_pieces(student, init, state, inputs):
    """For each (x, pieces): a fresh student attention fed `x` with the cache, pieces[0] tokens, then pieces[1],
    ...; the outputs stacked along the tokens."""
    from probe_kit.kv_parts import fed_in_pieces
    from probe_kit.parts import load_weights

    results = []
    for x, pieces in inputs:
        module = load_weights(student.MultiHeadAttention(**init).to(DEVICE), state).eval()
        results.append(fed_in_pieces(module, x, pieces))
    return results


@probe(returns=Fields("keys", "fresh"))
def attention_reset(student, init, state, x):
    """The student's attention after one cached call on x's first 3 tokens: .keys (its state_dict's keys), then
    reset_cache() and one cached call on all of x: .fresh."""
    from probe_kit.parts import load_weights

    module = load_weights(student.MultiHeadAttention(**init).to(DEVICE), state).eval()
    with torch.no_grad():
        module(x[:, :3], use_cache=True)
        keys = sorted(module.state_dict())
        module.reset_cache()
        fresh = module(x, use_cache=True)
    return {"keys": keys, "fresh": fresh}


@probe(returns=Fields("plain", "again", "pieces"))
def composite_in_pieces(student, stand_ins, class_name, cfg, state, x, pieces):
    """The student's TransformerBlock or GPTModel built on stand-ins of its parts: .plain (forward(x)), .again
    (forward(x, use_cache=False) right after), and .pieces, a fresh one fed x with the cache, pieces[0] tokens,
    then pieces[1], ... (outputs stacked; None without pieces)."""
    from probe_kit.kv_parts import fed_in_pieces, on_stand_ins
    from probe_kit.parts import load_weights

    with on_stand_ins(student, stand_ins):
        module = load_weights(getattr(student, class_name)(cfg).to(DEVICE), state).eval()
        with torch.no_grad():
            plain = module(x)
            again = module(x, use_cache=False)
        if not pieces:
            return {"plain": plain, "again": again, "pieces": None}
        fresh = load_weights(getattr(student, class_name)(cfg).to(DEVICE), state).eval()
        return {"plain": plain, "again": again, "pieces": fed_in_pieces(fresh, x, pieces)}


@probe(returns=Fields("uncached", "fresh"))
def model_reset(student, stand_ins, cfg, state, first, second):
    """The student's GPTModel on stand-in blocks: .uncached (forward(second, use_cache=False)), then a cached
    call on `first`, reset_kv_cache() and a cached call on `second`: .fresh."""
    from probe_kit.kv_parts import on_stand_ins
    from probe_kit.parts import load_weights

    with on_stand_ins(student, stand_ins):
        model = load_weights(student.GPTModel(cfg).to(DEVICE), state).eval()
        with torch.no_grad():
            uncached = model(second, use_cache=False)
            model(first, use_cache=True)
            model.reset_kv_cache()
            fresh = model(second, use_cache=True)
    return {"uncached": uncached, "fresh": fresh}


@probe(returns=ListOf(Fields("ids", "fed"), length="cases"))
def generate_on_stand_in(student, cfg, state, cases):
    """For each (earlier prompts, prompt, max_new_tokens, context_size, use_cache): a fresh stand-in GPT (with a
    cache) loaded with `state`; the student's generate_text_simple_cached is run on each earlier prompt, then on
    the prompt: .ids (what it returns for the prompt) and .fed ((tokens, use_cache) of each model call for it).
    Run on the trusted side with other generation functions as `student`, it gives the expected ids."""
    from probe_kit.kv_parts import GPTModel

    results = []
    for earlier, prompt, max_new_tokens, context_size, use_cache in cases:
        model = GPTModel(cfg).to(prompt.device)  # the worker's device (run_here: the grader's)
        model.load_state_dict(state)
        for before in earlier:
            student.generate_text_simple_cached(model, before, max_new_tokens, context_size=context_size)
        model.fed = []
        ids = student.generate_text_simple_cached(model, prompt, max_new_tokens, context_size=context_size,
                                                  use_cache=use_cache)
        results.append({"ids": ids, "fed": [list(call) for call in model.fed]})
    return results


# -- the reference's modules and the classic mistakes (trusted side) --------------------------------------------

def parameters(module: torch.nn.Module) -> dict:
    """The weights the grader sends: parameters only (the mask is built by the student's own __init__)."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def attention(init: dict, seed: int) -> ref.MultiHeadAttention:
    return reference_module(ref.MultiHeadAttention, seed, **init)


def full_output(module, x):
    """The reference's output for the whole input at once, without the cache."""
    with torch.no_grad():
        return module(x)


def pieces_with(att, x, pieces, *, offset=True, keep=True, masked=True):
    """The reference attention fed `x` with a cache, in `pieces`, with one mistake switched on: mask rows that
    start at 0 for every call (offset=False), new queries that see only the new keys (keep=False), no mask with
    the cache (masked=False)."""
    b = x.shape[0]

    def heads(t):  # (b, tokens, d_out) -> (b, num_heads, tokens, head_dim)
        return t.view(b, t.shape[1], att.num_heads, att.head_dim).transpose(1, 2)

    outputs, cached, start = [], None, 0
    for size in pieces:
        chunk = x[:, start:start + size]
        queries, keys, values = heads(att.W_query(chunk)), heads(att.W_key(chunk)), heads(att.W_value(chunk))
        if keep and cached is not None:
            keys, values = torch.cat([cached[0], keys], dim=2), torch.cat([cached[1], values], dim=2)
        cached = (keys, values)
        scores = queries @ keys.transpose(2, 3) / att.head_dim ** 0.5
        if masked:
            first = start if offset else 0
            scores = scores.masked_fill(att.mask.bool()[first:first + size, :keys.shape[2]], -torch.inf)
        context = torch.softmax(scores, dim=-1) @ values
        outputs.append(att.out_proj(context.transpose(1, 2).reshape(b, size, att.d_out)))
        start += size
    return torch.cat(outputs, dim=1)


CACHE_MISTAKES = [
    Mistake("a causal mask whose rows start at 0 for every call (not at the new tokens' positions)",
            "the new tokens sit at positions ptr_current_pos, ptr_current_pos + 1, ...: take the mask rows from "
            "ptr_current_pos on (and the columns of all cached keys), then advance ptr_current_pos.", offset=False),
    Mistake("attention over the new tokens only (the cache is not used)", "with use_cache=True the queries attend "
            "over the keys and values of the whole cache, the new ones appended to it.", keep=False),
    Mistake("a cached call without the causal mask", "a prefill or a chunk holds several new tokens: mask the "
            "future with the cache too.", masked=False),
]


# -- section 1: attention with a cache ------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("MultiHeadAttention")
def test_attention_without_cache(submission):
    """MultiHeadAttention without the cache is chapter 3's attention, and leaves the cache empty.

    forward(x) and forward(x, use_cache=False), with and without qkv_bias; a cached call afterwards starts
    afresh."""
    for index, init in enumerate((ATT_INIT, ATT_INIT_BIAS)):
        att = attention(init, 10 + index)
        x = randn(12 + index, 2, 6, init["d_in"])
        with explain_errors(state_dict_mismatch):
            first = submission.run(attention_calls, init=init, state=parameters(att), x=x, calls=[(6, None)])
        expected = full_output(att, x)
        what = f"MultiHeadAttention({init}) on {tuple(x.shape)}"
        expect_close(first[0], expected, what=f"{what}, forward(x)", hint=HINT_ATTENTION)
        # The same calls again, followed by others on the same module: an error now comes from the state kept.
        with explain_errors(error_mentions("", hint=HINT_UNCACHED)):
            got = submission.run(attention_calls, init=init, state=parameters(att), x=x,
                                 calls=[(6, None), (6, False), (1, True)])
        expect_close(got[1], expected, what=f"{what}, forward(x, use_cache=False) after forward(x)",
                     hint=HINT_UNCACHED)
        expect_close(got[2], expected[:, :1], what=f"{what}: a cached call on the first token after two uncached "
                     "calls", hint=HINT_UNCACHED)


def check_pieces(submission, cases, what):
    for index, init in enumerate((ATT_INIT, ATT_INIT_BIAS)):
        att = attention(init, 20 + index)
        inputs = [(randn(22 + index + 10 * n, batch, sum(pieces), init["d_in"]), pieces)
                  for n, (batch, pieces) in enumerate(cases)]
        with explain_errors(state_dict_mismatch, CACHE_ERRORS):
            got = submission.run(attention_in_pieces, init=init, state=parameters(att), inputs=inputs)
        for (x, pieces), mine in zip(inputs, got):
            expect_close(mine, full_output(att, x), what=f"MultiHeadAttention({init}): {what}, a batch of "
                         f"{x.shape[0]} fed in pieces of {pieces} tokens with the cache, compared with the whole "
                         "input without it", hint=HINT_CACHE, mistakes=CACHE_MISTAKES,
                         mistaken=partial(pieces_with, att, x, pieces))


@pytest.mark.points(3)
@pytest.mark.runs("MultiHeadAttention")
def test_attention_cache_one_token_at_a_time(submission):
    """MultiHeadAttention with the cache: a prompt, then one token at a time, gives the output for the whole
    sequence (batches of one and of several, one-token and longer prompts)."""
    check_pieces(submission, [(2, [3, 1, 1, 1]), (1, [1, 1, 1, 1, 1]), (3, [5, 1])], "one token at a time")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_attention_cache_one_token_at_a_time")
@pytest.mark.runs("MultiHeadAttention")
def test_attention_cache_in_chunks(submission):
    """MultiHeadAttention with the cache, fed in chunks of several tokens: each still sees only the tokens up to
    it (the mask rows start at the chunk's position), up to a context exactly full."""
    check_pieces(submission, [(2, [4, 3, 2]), (1, [2, 6, 2])], "chunks")


@pytest.mark.points(1)
@pytest.mark.runs("MultiHeadAttention")
def test_attention_reset_cache_and_state_dict(submission):
    """The cache stays out of MultiHeadAttention's state_dict, and reset_cache() starts afresh (empty cache,
    position 0)."""
    att = attention(ATT_INIT, 30)
    x = randn(31, 2, 5, 8)
    with explain_errors(state_dict_mismatch):
        got = submission.run(attention_reset, init=ATT_INIT, state=parameters(att), x=x)
    extra = [key for key in got.keys if key not in {*parameters(att), "mask"}]
    expect_equal(extra, [], what="the entries of the state_dict beyond the weights and the mask, after a cached "
                 "call", hint=HINT_STATE)
    expect_close(got.fresh, full_output(att, x), what="a cached call on 5 tokens after a cached call on 3 and "
                 "reset_cache(), compared with the output without the cache", hint=HINT_STATE)


# -- section 2: the transformer block -------------------------------------------------------------------------

def check_composite(submission, class_name, parts, model, x, pieces, *, what, hint, mistakes=(), mistaken=None,
                    again=True):
    with explain_errors(state_dict_mismatch):
        got = submission.run(composite_in_pieces, stand_ins=parts, class_name=class_name, cfg=CFG,
                             state=parameters(model), x=x, pieces=pieces)
    expected = full_output(model, x)
    expect_close(got.plain, expected, what=f"{what}, forward without the cache", hint=hint)
    if again:
        expect_close(got.again, expected, what=f"{what}, forward(x, use_cache=False) after forward(x)",
                     hint=f"a call without the cache must not fill it (nor move the positions). {hint}")
    expect_close(got.pieces, expected, what=f"{what}, fed in pieces of {pieces} tokens with the cache, compared "
                 "with the whole input without it", hint=hint, mistakes=mistakes, mistaken=mistaken)


@pytest.mark.points(1)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_transformer_block_passes_use_cache(submission):
    """TransformerBlock hands use_cache on to its attention: fed in pieces with the cache, it gives its output for
    the whole input (run with a correct cached attention in place of yours)."""
    block = reference_module(ref.TransformerBlock, 40, cfg=CFG)
    x = 2 * randn(41, 2, 6, CFG["emb_dim"])
    dropped = Mistake("a block that does not hand use_cache on to its attention", "call self.att with "
                      "use_cache=use_cache, so that the attention keeps and reads its cache.", dropped=True)

    def block_with(dropped):
        block.att.reset_cache()
        outputs, start = [], 0
        for size in (3, 1, 2):
            h = x[:, start:start + size]
            h = h + block.att(block.norm1(h), use_cache=not dropped)
            outputs.append(h + block.ff(block.norm2(h)))
            start += size
        block.att.reset_cache()
        return torch.cat(outputs, dim=1)

    check_composite(submission, "TransformerBlock", BLOCK_PARTS, block, x, [3, 1, 2], what="TransformerBlock",
                    hint=HINT_BLOCK, mistakes=[dropped], mistaken=block_with)


# -- section 3: the model ------------------------------------------------------------------------------------

def gpt_model(seed: int) -> ref.GPTModel:
    model = reference_module(ref.GPTModel, seed, cfg=CFG)
    with torch.no_grad():
        model.pos_emb.weight.mul_(3)  # positions that matter: position mistakes show clearly
    return model


def model_pieces_with(model, idx, pieces, *, restart=False, pass_cache=True):
    """The reference model fed `idx` in pieces with the cache, with positions restarting at 0 for every call or
    blocks that are not handed use_cache."""
    outputs, start = [], 0
    model.reset_kv_cache()
    for size in pieces:
        chunk = idx[:, start:start + size]
        first = 0 if restart else start
        x = model.tok_emb(chunk) + model.pos_emb(torch.arange(first, first + size))
        for block in model.trf_blocks:
            x = block(x, use_cache=pass_cache)
        outputs.append(model.out_head(model.final_norm(x)))
        start += size
    model.reset_kv_cache()
    return torch.cat(outputs, dim=1)


MODEL_MISTAKES = [
    Mistake("position ids that restart at 0 for every call", "with use_cache=True the new tokens' positions start "
            "at current_pos (the number of tokens already cached), which then advances.", restart=True),
    Mistake("a model that does not hand use_cache on to its blocks", "call each block with use_cache=use_cache.",
            pass_cache=False),
]


@pytest.mark.points(1)
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_without_cache(submission):
    """GPTModel without the cache: the logits of chapter 4's model, for inputs of every length up to the context
    (run with correct cached blocks in place of yours)."""
    model = gpt_model(50)
    for index, tokens in enumerate((CFG["context_length"], 1)):
        idx = randint(51 + index, CFG["vocab_size"], 2, tokens)
        with explain_errors(state_dict_mismatch):
            got = submission.run(composite_in_pieces, stand_ins=MODEL_PARTS, class_name="GPTModel", cfg=CFG,
                                 state=parameters(model), x=idx, pieces=[])
        what = f"GPTModel logits without the cache, input of shape {tuple(idx.shape)}"
        expect_close(got.plain, full_output(model, idx), what=what, hint=HINT_MODEL)
        expect_close(got.again, full_output(model, idx), what=f"{what}, forward(in_idx, use_cache=False) after "
                     "forward(in_idx)", hint="a call without the cache hands use_cache=False to the blocks, so that "
                     "they neither fill nor read their caches. " + HINT_MODEL)


@pytest.mark.points(3)
@pytest.mark.depends_on("test_gpt_model_without_cache")
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_cache_positions(submission):
    """GPTModel with the cache: a prompt, then one token at a time or in chunks, gives the logits of the whole
    sequence; positions continue after the cached tokens (run with correct cached blocks in place of yours)."""
    model = gpt_model(60)
    for index, (batch, pieces) in enumerate([(2, [4, 1, 1, 1]), (1, [1, 1, 1]), (3, [2, 3, 7])]):
        idx = randint(61 + index, CFG["vocab_size"], batch, sum(pieces))
        check_composite(submission, "GPTModel", MODEL_PARTS, model, idx, pieces, what=f"GPTModel logits, a batch "
                        f"of {batch}", hint=HINT_POSITIONS, mistakes=MODEL_MISTAKES,
                        mistaken=partial(model_pieces_with, model, idx, pieces), again=False)


@pytest.mark.points(1)
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_reset_kv_cache(submission):
    """GPTModel.reset_kv_cache() empties every block's cache and starts the positions at 0 again: the next prompt
    gives its own logits (run with correct cached blocks in place of yours)."""
    model = gpt_model(70)
    first, second = randint(71, CFG["vocab_size"], 1, 5), randint(72, CFG["vocab_size"], 1, 4)
    with explain_errors(state_dict_mismatch):
        got = submission.run(model_reset, stand_ins=MODEL_PARTS, cfg=CFG, state=parameters(model), first=first,
                             second=second)
    expected = full_output(model, second)
    expect_close(got.uncached, expected, what="GPTModel logits without the cache", hint=HINT_MODEL)
    expect_close(got.fresh, expected, what="GPTModel logits for a prompt of 4 tokens fed with the cache after "
                 "another prompt and reset_kv_cache()", hint=HINT_RESET)


# -- section 4: generation ---------------------------------------------------------------------------------------

GEN_CFG = {"vocab_size": 29, "context_length": 12, "emb_dim": 12, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
           "qkv_bias": False}


def generation_state() -> dict:
    """The stand-in GPT's weights: a large output head, so that greedy choices are clear-cut on every device."""
    model = reference_module(ref.GPTModel, 80, cfg=GEN_CFG)
    with torch.no_grad():
        model.out_head.weight.mul_(4)
        model.pos_emb.weight.mul_(3)
    return {name: tensor for name, tensor in model.state_dict().items() if "mask" not in name}


def uncached(model, idx, max_new_tokens, context_size=None, use_cache=True):
    """Greedy generation without the cache (the last context_size tokens at every step): the expected ids."""
    return ref.generate_text_simple_cached(model, idx, max_new_tokens, context_size, use_cache=False)


def growing(model, idx, max_new_tokens, context_size=None, use_cache=True, *, reset=True, crop=True):
    """Greedy generation as the book's function does it (the cache keeps growing past context_size), or with one
    mistake: no reset before the prompt, or the whole prompt run without cropping it."""
    model.eval()
    ctx_len = context_size or model.pos_emb.num_embeddings
    with torch.no_grad():
        if reset:
            model.reset_kv_cache()
        logits = model(idx[:, -ctx_len:] if crop else idx, use_cache=True)
        for _ in range(max_new_tokens):
            next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, next_idx], dim=1)
            logits = model(next_idx, use_cache=True)
    return idx


GENERATION_MISTAKES = [
    Mistake("generation without resetting the cache first", "the model keeps its cache from one call to the next: "
            "reset it (reset_kv_cache) before the prefill of every new prompt.", reset=False),
    Mistake("a prefill of the whole prompt (not cropped to ctx_len: the cache holds more than context_size tokens)",
            "run only the prompt's last ctx_len tokens in the prefill.", crop=False),
]


def generated(function, cases):
    """The ids `function` generates for each case with the stand-in GPT (the grader's side)."""
    found = run_here(generate_on_stand_in, SimpleNamespace(generate_text_simple_cached=function), cfg=GEN_CFG,
                     state=generation_state(), cases=cases)
    return [result.ids for result in found]


def same_ids(got, mistaken) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == mistaken.shape and torch.equal(got, mistaken)


def fed_as_cached(fed, prompt_tokens, max_new_tokens, sliding_allowed) -> bool:
    """The prompt once with the cache, then one token per call: max_new_tokens calls in all, or one more (the
    book feeds the last new token too). Where the window may slide, only the prefill is checked."""
    if not fed or fed[0] != [prompt_tokens, True]:
        return False
    return sliding_allowed or (len(fed) in (max_new_tokens, max_new_tokens + 1)
                               and all(call == [1, True] for call in fed[1:]))


def generation_hint(ids, case) -> str:
    """A classic mistake that gives exactly the student's ids, else the idea of cached greedy decoding."""
    named = name_mistake(ids, GENERATION_MISTAKES, lambda **change: generated(partial(growing, **change), [case])[0],
                         matches=same_ids, yours="your ids are")
    return named or HINT_GENERATE


def check_generation(submission, cases, *, what, accept_growing=False, check_calls=True):
    state = generation_state()
    expected = generated(uncached, cases)
    book = generated(growing, cases) if accept_growing else expected
    with explain_errors(OVERFLOW):
        got = submission.run(generate_on_stand_in, cfg=GEN_CFG, state=state, cases=cases)
    for case, mine, want, alternative in zip(cases, got, expected, book):
        earlier, prompt, max_new_tokens, context_size, use_cache = case
        label = (f"{what}: a batch of {prompt.shape[0]} prompt(s) of {prompt.shape[1]} token(s), max_new_tokens="
                 f"{max_new_tokens}, context_size={context_size}, use_cache={use_cache}"
                 + (f", after {len(earlier)} earlier generation(s) with the same model" if earlier else ""))
        ids = mine.ids
        if accept_growing and same_ids(ids, alternative):
            want = alternative  # the book's way past context_size: accepted
        expect_equal(ids, want, what=f"token ids from {label}", hint=partial(generation_hint, ids, case))
        if use_cache and check_calls:
            ctx_len = context_size or GEN_CFG["context_length"]
            expect_true(fed_as_cached(mine.fed, min(prompt.shape[1], ctx_len), max_new_tokens, accept_growing),
                        what=f"the calls of the model (tokens, use_cache) for {label}",
                        problem=f"they were {mine.fed}.", hint=HINT_FED)


# (earlier prompts, prompt, max_new_tokens, context_size, use_cache)
EQUAL_CASES = [((), randint(90, 29, 3, 4), 6, None, True), ((), randint(91, 29, 1, 1), 5, None, True),
               ((), randint(92, 29, 2, 5), 7, None, True), ((), randint(93, 29, 2, 3), 4, 12, True),
               ((), randint(94, 29, 2, 4), 5, None, False)]


@pytest.mark.points(3)
@pytest.mark.runs("generate_text_simple_cached")
def test_generate_cached_equals_uncached(submission):
    """generate_text_simple_cached gives the ids of greedy generation without the cache, using the cache (the
    prompt once, then one token per call), for batches of one and of several, up to a context exactly full;
    use_cache=False gives the same ids (run with a correct cached GPT)."""
    check_generation(submission, EQUAL_CASES, what="generation")


@pytest.mark.points(1)
@pytest.mark.runs("generate_text_simple_cached")
def test_generate_cached_resets_between_prompts(submission):
    """Two or three generations in a row with the same model: each gives the ids of its own prompt (the cache is
    reset at the start of each)."""
    cases = [((randint(100, 29, 1, 3),), randint(101, 29, 1, 2), 3, None, True),
             ((randint(102, 29, 2, 2), randint(103, 29, 2, 3)), randint(104, 29, 2, 2), 2, None, True)]
    check_generation(submission, cases, what="generation after earlier ones", check_calls=False)


@pytest.mark.points(1)
@pytest.mark.runs("generate_text_simple_cached")
def test_generate_cached_crops_the_prompt(submission):
    """A prompt longer than context_size: only its last context_size tokens go into the cache.

    Past context_size, sliding the window (as without the cache) and the book's growing cache are both
    accepted."""
    cases = [((), randint(110, 29, 2, 7), 1, 4, True), ((), randint(111, 29, 1, 8), 3, 5, True)]
    check_generation(submission, cases, what="generation with a short context", accept_growing=True)
