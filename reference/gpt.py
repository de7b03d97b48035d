"""Chapter 4: implementing a GPT model from scratch to generate text.

The pieces of GPT-2, bottom up:

1. :class:`LayerNorm`: normalise each token's vector to mean 0 and variance 1, then scale and shift it
   with two trainable vectors.
2. :class:`GELU`: the smooth activation GPT-2 uses (the tanh approximation).
3. :class:`FeedForward`: two linear layers around a GELU, four times wider in the middle.
4. :class:`ExampleDeepNeuralNetwork`: a toy network that shows why shortcut (residual) connections keep
   gradients alive in deep networks (:func:`print_gradients`).
5. :class:`TransformerBlock`: multi-head attention (chapter 3) and the feed-forward network, each after a
   LayerNorm ("pre-LayerNorm") and each wrapped in a shortcut connection.
6. :class:`GPTModel`: token and position embeddings, ``n_layers`` transformer blocks, a final LayerNorm
   and a linear output head that gives one logit per vocabulary entry.
7. :func:`generate_text_simple`: greedy decoding, one token at a time.

Configurations: :data:`GPT_CONFIG_124M` is the book's (the smallest GPT-2), :data:`GPT_CONFIG_DEMO` is the
course's small model that trains on the project's corpus in about a minute on two CPU cores.

The graders load this module's ``state_dict`` into the student's model, so the attribute names, the
parameter shapes and the order in which layers are built are the book's: with the same seed, the same
configuration builds the same weights.

Shapes: ``batch`` is the batch size, ``num_tokens`` the sequence length, ``emb_dim`` the width of each
token's vector, ``vocab_size`` the number of token ids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reference.attention import MultiHeadAttention

__all__ = [
    "GPT_CONFIG_124M",
    "GPT_CONFIG_DEMO",
    "LayerNorm",
    "GELU",
    "FeedForward",
    "ExampleDeepNeuralNetwork",
    "print_gradients",
    "TransformerBlock",
    "GPTModel",
    "generate_text_simple",
]

# The smallest GPT-2 ("124M"), as the book configures it in chapter 4.
GPT_CONFIG_124M = {
    "vocab_size": 50257,  # GPT-2's BPE vocabulary (tiktoken "gpt2")
    "context_length": 1024,  # the longest input the position embeddings cover
    "emb_dim": 768,  # width of every token's vector
    "n_heads": 12,  # attention heads per block (head_dim = 768 / 12 = 64)
    "n_layers": 12,  # transformer blocks
    "drop_rate": 0.1,  # dropout after the embeddings, on the attention weights and on the shortcuts
    "qkv_bias": False,  # no bias in the query/key/value projections (GPT-2's weights do have one)
}

# The course's demo model: the same architecture, small enough to train on the project's short story in
# about a minute on two CPU cores (chapter 5 and appendix D demos). The vocabulary stays GPT-2's, so
# the token embedding and the output head hold 6.4 of its 6.5 million parameters, and the output head and
# the softmax over 50,257 logits cost most of the training time.
GPT_CONFIG_DEMO = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 64,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


class LayerNorm(nn.Module):
    """Normalise the last dimension to mean 0 and variance 1, then scale and shift it.

    ``scale`` starts at ones and ``shift`` at zeros, so a fresh layer only normalises. The variance is the
    biased one (divide by n, not n - 1), as in GPT-2 and ``torch.nn.LayerNorm``; ``eps`` keeps the division
    finite when a vector is constant.
    """

    def __init__(self, emb_dim: int):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # (..., 1): biased variance
        norm_x = (x - mean) / torch.sqrt(var + self.eps)  # (..., emb_dim)
        return self.scale * norm_x + self.shift  # (..., emb_dim)


class GELU(nn.Module):
    """Gaussian error linear unit, in the tanh approximation GPT-2 was trained with.

    GELU(x) ~ 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). Unlike ReLU it is smooth at 0 and lets a
    little of the negative inputs through, which gives non-zero gradients there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    """Linear (emb_dim -> 4 * emb_dim), GELU, Linear (4 * emb_dim -> emb_dim), applied to each token.

    The wider middle layer lets the network work in a richer space; the output has the input's width, so
    blocks can be stacked.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (batch, num_tokens, emb_dim)


class ExampleDeepNeuralNetwork(nn.Module):
    """Five Linear + GELU layers, with or without shortcut connections (the book's gradient demo).

    Args:
        layer_sizes: six widths; layer i maps ``layer_sizes[i]`` to ``layer_sizes[i + 1]``.
        use_shortcut: add each layer's input to its output, where the shapes allow it.

    Without shortcuts the gradients shrink layer after layer on their way back to the first layer
    (vanishing gradients); with them, the identity path carries the gradient back undiminished.
    """

    def __init__(self, layer_sizes: list[int], use_shortcut: bool):
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(layer_sizes[i], layer_sizes[i + 1]), GELU()) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            layer_output = layer(x)
            # A shortcut needs the same shape on both sides (the last layer here narrows to 1 output).
            if self.use_shortcut and x.shape == layer_output.shape:
                x = x + layer_output
            else:
                x = layer_output
        return x


def print_gradients(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Backpropagate an MSE loss against the target 0 and print each weight's mean absolute gradient.

    Prints one line per weight matrix, as the book does, and also returns ``{name: mean |gradient|}``.
    The target is ``[[0.]]``: the book's demo network has a single output for a single example.
    """
    output = model(x)
    target = torch.tensor([[0.0]])
    loss = nn.MSELoss()(output, target)
    loss.backward()

    gradients = {}
    for name, param in model.named_parameters():
        if "weight" in name:
            gradients[name] = param.grad.abs().mean().item()
            print(f"{name} has gradient mean of {gradients[name]}")
    return gradients


class TransformerBlock(nn.Module):
    """The repeated unit of GPT: attention then feed-forward, each in a pre-LayerNorm shortcut.

    x -> x + Dropout(Attention(LayerNorm(x))) -> x + Dropout(FeedForward(LayerNorm(x))).
    Attention mixes information between tokens (each token sees only itself and earlier tokens); the
    feed-forward network then transforms each token on its own. The input and output shapes are equal.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Attention sub-block: normalise first (pre-LayerNorm), then add the input back (shortcut).
        shortcut = x  # (batch, num_tokens, emb_dim)
        x = self.norm1(x)
        x = self.att(x)  # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut

        # Feed-forward sub-block, the same pattern.
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)  # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut
        return x  # (batch, num_tokens, emb_dim)


class GPTModel(nn.Module):
    """GPT-2's architecture: embeddings, ``n_layers`` transformer blocks, final LayerNorm, output head.

    ``forward(in_idx)`` maps token ids (batch, num_tokens), with num_tokens <= context_length, to logits
    (batch, num_tokens, vocab_size): row j holds the scores of every possible next token after token j.

    The output head has no bias and its own weight matrix. GPT-2 ties it to the token embedding (the same
    matrix); the book keeps them separate, which is why the model has 163,009,536 parameters, of which
    124,412,160 remain once the output head is counted as the embedding.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])

        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = in_idx.shape  # (batch, num_tokens)
        tok_embeds = self.tok_emb(in_idx)  # (batch, num_tokens, emb_dim)
        # Position ids are made on the input's device: a CPU arange would fail against a model on a GPU.
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))  # (num_tokens, emb_dim)
        x = tok_embeds + pos_embeds  # (batch, num_tokens, emb_dim): broadcast over the batch
        x = self.drop_emb(x)
        x = self.trf_blocks(x)  # (batch, num_tokens, emb_dim)
        x = self.final_norm(x)
        logits = self.out_head(x)  # (batch, num_tokens, vocab_size)
        return logits


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """Greedy decoding: append the most likely next token, ``max_new_tokens`` times.

    Args:
        model: maps (batch, n) token ids to (batch, n, vocab_size) logits.
        idx: (batch, n) token ids of the prompt, on the model's device.
        max_new_tokens: how many tokens to append.
        context_size: the longest input the model supports; only the last ``context_size`` tokens are fed.

    Returns:
        (batch, n + max_new_tokens): the prompt followed by the generated ids.

    The caller chooses the mode: call ``model.eval()`` first, or dropout makes the result random.
    """
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (batch, <= context_size): crop to what the model supports
        with torch.no_grad():
            logits = model(idx_cond)  # (batch, n_cond, vocab_size)
        logits = logits[:, -1, :]  # (batch, vocab_size): only the last position predicts the next token
        # The largest logit is also the largest probability: softmax is monotonic, so it can be skipped.
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch, 1)
        idx = torch.cat((idx, idx_next), dim=1)  # (batch, n + 1)
    return idx
