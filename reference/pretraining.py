"""Chapter 5: pretraining on unlabeled data.

From an untrained :class:`~reference.gpt.GPTModel` to one that writes plausible text:

1. text <-> token ids for generation (:func:`text_to_token_ids`, :func:`token_ids_to_text`);
2. the training objective, the cross-entropy of the next token (:func:`calc_loss_batch`), averaged over a
   data loader (:func:`calc_loss_loader`);
3. the training loop (:func:`train_model_simple`) with periodic evaluation (:func:`evaluate_model`) and a
   sample after every epoch (:func:`generate_and_print_sample`), and the loss plot (:func:`plot_losses`);
4. decoding strategies that make the output less repetitive: temperature scaling and top-k sampling
   (:func:`generate`), with a stop token that works for batches;
5. saving and loading the model and optimizer state (:func:`save_checkpoint`, :func:`load_checkpoint`);
6. loading OpenAI's pretrained GPT-2 weights (the Hugging Face safetensors layout) into the model
   (:func:`load_weights_into_gpt`, from :mod:`reference.gpt2_weights`, which explains the mapping).

``python -m reference.pretraining --plot loss.png`` trains the course's demo model
(:data:`reference.gpt.GPT_CONFIG_DEMO`) on the project's own short story (``data/corpus/``) and writes
the loss plot. Its 95 steps of 256 tokens take about 50 s of CPU time (one thread; see
``docs/benchmarks.md``).

The book's own run (GPT_CONFIG_124M with context 256 on "The Verdict", seed 123, AdamW lr 4e-4 and weight
decay 0.1, batch 2, 10 epochs, eval_freq 5, eval_iter 5) reproduces the printed losses on a CPU with
torch 2.13: 9.781 / 9.933 at step 0, 8.111 / 8.339 at step 5, ..., 0.391 / 6.452 at step 85. It takes about
11 minutes on two idle cores and needs the text (``python -m reference.book_data the-verdict``), so it is not
part of the tests.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from reference.gpt import GPT_CONFIG_DEMO, GPTModel, generate_text_simple
from reference.gpt2_weights import load_weights_into_gpt  # section 5.5: GPT-2's weights into GPTModel

if TYPE_CHECKING:  # matplotlib is imported by plot_losses only: it costs about a second to import
    from matplotlib.figure import Figure

__all__ = [
    "CORPUS_PATH",
    "DEMO_SETTINGS",
    "read_corpus",
    "text_to_token_ids",
    "token_ids_to_text",
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate_model",
    "generate_and_print_sample",
    "train_model_simple",
    "generate",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights_into_gpt",
    "plot_losses",
    "create_demo_loaders",
    "train_demo",
]

# The project's own training text: an original short story written for this course (see its README).
CORPUS_PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "corpus" / "the-lamplighters-apprentice.txt"

# How the demo trains GPT_CONFIG_DEMO on the corpus (the book's chapter 5 recipe, scaled down).
DEMO_SETTINGS = {
    "train_ratio": 0.90,  # first 90% of the characters for training, the rest for validation
    "batch_size": 4,
    "num_epochs": 5,
    "learning_rate": 4e-3,
    "weight_decay": 0.1,
    "eval_freq": 10,
    "eval_iter": 5,
    "seed": 123,
    "start_context": "Every evening, the old man",
}


def read_corpus(path: str | os.PathLike[str] | None = None) -> str:
    """The text of the project's corpus (or of ``path``), read as UTF-8."""
    return pathlib.Path(path or CORPUS_PATH).read_text(encoding="utf-8")


# --- text <-> token ids -----------------------------------------------------------------------------------


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode ``text`` (``<|endoftext|>`` allowed) as a (1, n) tensor: a batch of one sequence."""
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # (1, n)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode a (1, n) tensor (or a (n,) one) of token ids back to text."""
    flat = token_ids.squeeze(0)  # (n,): drop the batch dimension
    return tokenizer.decode(flat.tolist())


# --- the loss -----------------------------------------------------------------------------------------------


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module, device) -> torch.Tensor:
    """Mean cross-entropy of the next token over every position of a batch.

    Args:
        input_batch: (batch, num_tokens) token ids.
        target_batch: (batch, num_tokens) the token that follows each input token.

    The logits (batch, num_tokens, vocab_size) and targets are flattened so that every position of every
    sequence counts as one classification example.
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, num_tokens, vocab_size)
    loss = nn.functional.cross_entropy(
        logits.flatten(0, 1),  # (batch * num_tokens, vocab_size)
        target_batch.flatten(),  # (batch * num_tokens,)
    )
    return loss


def calc_loss_loader(data_loader, model: nn.Module, device, num_batches: int | None = None) -> float:
    """The average of :func:`calc_loss_batch` over the first ``num_batches`` batches (all by default).

    An empty loader gives NaN, as in the book. ``num_batches`` larger than the loader is cut to its length.
    Gradients are the caller's business: wrap the call in ``torch.no_grad()`` when not training.
    """
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        loss = calc_loss_batch(input_batch, target_batch, model, device)
        total_loss += loss.item()
    return total_loss / num_batches


# --- training -----------------------------------------------------------------------------------------------


def evaluate_model(model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    """Training and validation loss over ``eval_iter`` batches each, in eval mode (no dropout), no gradients.

    The model is put back into training mode afterwards.
    """
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model: nn.Module, tokenizer, device, start_context: str) -> None:
    """Print 50 greedily generated tokens after ``start_context``, on one line (newlines become spaces)."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]  # the model's context length
    encoded = text_to_token_ids(start_context, tokenizer).to(device)  # (1, n)
    with torch.no_grad():
        token_ids = generate_text_simple(model=model, idx=encoded, max_new_tokens=50, context_size=context_size)
    decoded_text = token_ids_to_text(token_ids, tokenizer)
    print(decoded_text.replace("\n", " "))
    model.train()


def _progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr, or ``None`` when progress reporting is off (the default).

    Off by default because nbgrader scores 0 for a graded cell that writes to stderr.
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm  # imported only when asked for

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)


def train_model_simple(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    start_context: str,
    tokenizer,
    *,
    progress: bool = False,
) -> tuple[list[float], list[float], list[int]]:
    """The book's training loop: one optimizer step per batch, an evaluation every ``eval_freq`` steps.

    Steps are counted from 0 over all epochs; the losses are evaluated after steps 0, eval_freq,
    2 * eval_freq, ... (over ``eval_iter`` batches of each loader) and printed. After every epoch a sample
    is generated from ``start_context`` and printed.

    Returns:
        (train_losses, val_losses, track_tokens_seen): one entry per evaluation; ``track_tokens_seen`` is
        the number of input tokens trained on so far (batch size x sequence length per step).

    ``progress=True`` adds a tqdm progress bar on stderr (not in the book; keep it off in graded cells).
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    bar = _progress_bar(num_epochs * len(train_loader), progress, "training")

    for epoch in range(num_epochs):
        model.train()  # dropout on
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients accumulate otherwise
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()  # batch * num_tokens
            global_step += 1
            if bar is not None:
                bar.update(1)

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        generate_and_print_sample(model, tokenizer, device, start_context)

    if bar is not None:
        bar.close()
    return train_losses, val_losses, track_tokens_seen


# --- decoding -----------------------------------------------------------------------------------------------


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens with top-k filtering, temperature and an optional stop token.

    Args:
        model: maps (batch, n) token ids to (batch, n, vocab_size) logits; call ``model.eval()`` first.
        idx: (batch, n) prompt token ids, on the model's device.
        max_new_tokens: the most tokens appended to each row.
        context_size: only the last ``context_size`` tokens are fed to the model.
        temperature: 0 (the default) picks the most likely token (greedy); above 0 the logits are divided
            by it and the next token is sampled (``torch.multinomial``) from their softmax: below 1 sharpens
            the distribution, above 1 flattens it.
        top_k: keep only the logits that are >= the k-th largest logit of their row (all the others become
            -inf). Ties with the k-th largest value are all kept, so more than k tokens may stay. Applied
            before the temperature. ``top_k`` larger than the vocabulary raises, as ``torch.topk`` does.
        eos_id: a token id that ends a row (for example 50256, ``<|endoftext|>``).

    Returns:
        (batch, n + m) with 0 <= m <= max_new_tokens.

    The stop rule, per step: the next token of every row is chosen (rows that have already finished get
    ``eos_id`` instead of their choice); a row that chooses ``eos_id`` is finished from then on.

    - If every row is finished after this step, generation stops and this step's column is NOT appended.
      With a single row this is exactly the book's rule: the sequence ends before its ``eos_id``.
    - Otherwise the column is appended: rows that finished (now or earlier) get ``eos_id`` there, as padding,
      and the other rows get their new token.

    So a row that stops while others continue is padded with ``eos_id`` from the step at which it chose it;
    the rows that stop last (at the same step) end without it. With greedy decoding every row is the
    result the row would get on its own, followed by ``eos_id`` padding. The book's version stops the
    whole batch as soon as any row chooses ``eos_id`` (and its top-k fails for batches larger than one).
    """
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (batch,)

    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (batch, <= context_size)
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]  # (batch, vocab_size)

        if top_k is not None:
            top_logits, _ = torch.topk(logits, top_k)  # (batch, top_k), sorted, largest first
            min_val = top_logits[:, -1:]  # (batch, 1): each row's k-th largest logit
            # "<" rather than "<=": every logit equal to the k-th largest survives.
            logits = torch.where(logits < min_val, torch.full_like(logits, -torch.inf), logits)

        if temperature > 0.0:
            logits = logits / temperature
            # Subtracting each row's maximum changes nothing mathematically and keeps exp() from overflowing.
            logits = logits - logits.max(dim=-1, keepdim=True).values
            probs = torch.softmax(logits, dim=-1)  # (batch, vocab_size)
            idx_next = torch.multinomial(probs, num_samples=1)  # (batch, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch, 1)

        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)  # finished rows: padding
            finished = finished | (idx_next.squeeze(1) == eos_id)  # (batch,)
            if bool(finished.all()):
                break  # every row is done: stop before appending, as the book does for one row

        idx = torch.cat((idx, idx_next), dim=1)  # (batch, n + 1)

    return idx


# --- checkpoints --------------------------------------------------------------------------------------------


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Save the model's and the optimizer's state in one file, as the book does.

    The file holds ``{"model_state_dict": ..., "optimizer_state_dict": ...}``. The optimizer's state
    (AdamW's running averages) is what lets training continue where it stopped.
    """
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None, map_location=None
) -> nn.Module:
    """Load a file written by :func:`save_checkpoint` into ``model`` (and ``optimizer``); return the model.

    The file is read with ``weights_only=True``: tensors and plain containers only, never arbitrary pickled
    objects. The model is left in training mode, as the book does before it continues training.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(checkpoint["model_state_dict"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    model.train()
    return model


# --- the plot -----------------------------------------------------------------------------------------------


def plot_losses(
    epochs_seen, tokens_seen, train_losses, val_losses, save_path: str | os.PathLike[str] | None = None
) -> Figure:
    """Training and validation loss against epochs (bottom axis) and tokens seen (top axis).

    Returns the matplotlib figure; ``save_path`` also writes it (the format follows the extension: .png,
    .pdf, ...). The figure is drawn with the Agg backend without going through pyplot, so nothing opens a
    window and no global plotting state changes; in a notebook, the returned figure displays itself.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3))
    FigureCanvasAgg(fig)  # the Agg canvas renders the figure (savefig, notebook display)
    ax1 = fig.add_subplot()

    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only

    # A second x-axis on top, sharing the y-axis: an invisible line aligns its ticks with tokens seen.
    ax2 = ax1.twiny()
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")

    fig.tight_layout()
    if save_path is not None:
        fig.savefig(save_path)
    return fig


# --- the demo -----------------------------------------------------------------------------------------------


def create_demo_loaders(text: str, cfg: dict, train_ratio: float, batch_size: int, seed: int):
    """The book's chapter 5 split and loaders: first ``train_ratio`` of the characters train, the rest validate.

    Windows of ``cfg["context_length"]`` tokens with a stride of the same length (no overlap); the training
    loader shuffles (seeded) and drops an incomplete last batch, the validation loader does neither.
    """
    from reference.text_data import create_dataloader_v1

    split_idx = int(train_ratio * len(text))
    torch.manual_seed(seed)  # the training loader's shuffling draws from the global generator
    train_loader = create_dataloader_v1(
        text[:split_idx],
        batch_size=batch_size,
        max_length=cfg["context_length"],
        stride=cfg["context_length"],
        drop_last=True,
        shuffle=True,
        num_workers=0,
    )
    val_loader = create_dataloader_v1(
        text[split_idx:],
        batch_size=batch_size,
        max_length=cfg["context_length"],
        stride=cfg["context_length"],
        drop_last=False,
        shuffle=False,
        num_workers=0,
    )
    return train_loader, val_loader


def train_demo(
    cfg: dict | None = None, settings: dict | None = None, text: str | None = None, device="cpu", progress: bool = False
) -> dict:
    """Train a fresh, seeded model on the corpus with :func:`train_model_simple`; return what happened.

    Returns a dict with ``model``, ``optimizer``, ``train_losses``, ``val_losses``, ``tokens_seen``,
    ``num_epochs``, ``seconds`` (wall-clock time of the training loop) and ``tokens_per_second``.
    """
    from reference.tiktoken_offline import get_gpt2_tokenizer

    cfg = dict(GPT_CONFIG_DEMO if cfg is None else cfg)
    settings = {**DEMO_SETTINGS, **(settings or {})}
    text = read_corpus() if text is None else text
    tokenizer = get_gpt2_tokenizer()

    train_loader, val_loader = create_demo_loaders(
        text, cfg, settings["train_ratio"], settings["batch_size"], settings["seed"]
    )
    torch.manual_seed(settings["seed"])
    model = GPTModel(cfg).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )

    start = time.perf_counter()
    train_losses, val_losses, tokens_seen = train_model_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_epochs=settings["num_epochs"],
        eval_freq=settings["eval_freq"],
        eval_iter=settings["eval_iter"],
        start_context=settings["start_context"],
        tokenizer=tokenizer,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    total_tokens = settings["num_epochs"] * len(train_loader) * settings["batch_size"] * cfg["context_length"]
    return {
        "model": model,
        "optimizer": optimizer,
        "train_losses": train_losses,
        "val_losses": val_losses,
        "tokens_seen": tokens_seen,
        "num_epochs": settings["num_epochs"],
        "seconds": seconds,
        "tokens_per_second": total_tokens / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference.pretraining",
        description="Train the course's demo GPT on the project's corpus and plot the losses.",
    )
    parser.add_argument("--plot", metavar="OUT", help="write the loss plot here (.png, .pdf, ...)")
    parser.add_argument("--epochs", type=int, default=DEMO_SETTINGS["num_epochs"])
    parser.add_argument("--text", metavar="FILE", help="train on this UTF-8 text instead of the corpus")
    parser.add_argument("--save", metavar="FILE", help="save the model and optimizer state here")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    args = parser.parse_args(argv)

    text = read_corpus(args.text) if args.text else None
    result = train_demo(settings={"num_epochs": args.epochs}, text=text, progress=args.progress)
    print(
        f"Trained {result['num_epochs']} epochs in {result['seconds']:.1f} s "
        f"({result['tokens_per_second']:.0f} training tokens/s)."
    )
    if args.plot:
        epochs_seen = torch.linspace(0, result["num_epochs"], len(result["train_losses"]))
        plot_losses(epochs_seen, result["tokens_seen"], result["train_losses"], result["val_losses"], args.plot)
        print(f"Loss plot written to {args.plot}")
    if args.save:
        save_checkpoint(result["model"], result["optimizer"], args.save)
        print(f"Model and optimizer state saved to {args.save}")
    if math.isnan(result["val_losses"][-1]):
        print("The validation loader is empty: the text is too short for the context length.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
