"""Grader of chapter 2: working with text data.

The tokenizer tests send a vocabulary built by the reference and compare token ids and decoded text; the data
tests run the student's GPTDatasetV1 / create_dataloader_v1 with GPT-2's tokenizer (tiktoken, offline) in the
worker and compare every input/target window; the embedding test loads the reference's embedding weights.

A bug costs the points of its own definition: the tokenizers run on a correct `simple_tokenize` and the data
loader on a correct `GPTDatasetV1` (stand-ins from probe_kit.text_parts, swapped in by probe_kit.parts), so a
tokenizing or windowing bug is not charged again to the classes that use it. Beyond the book's examples the
tests probe non-ASCII text (accents, CJK, emoji), an empty text, a batch of one, and that the data loader
leaves the global random generator alone (shuffling draws from it, it must not reseed it).

Edge cases where the book's editions differ are accepted both ways or left out of the graded contract (the
notebook says so): GPTDatasetV1 on a text of exactly max_length tokens may be empty (the print edition) or
refuse the text with an AssertionError or ValueError (the book's current notebook); build_vocab is not graded
on special tokens that are already among the tokens (the book appends them without checking).
"""

import pytest
import torch
from torch import nn

from checks.ch02_text_data import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, Anything, ListOf, error_mentions, expect_close, expect_count, expect_equal, probe
from course.grading.compare import expect_true
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors
from course.grading.probes import run_here
from reference import text_data as ref
from reference.tiktoken_offline import get_gpt2_tokenizer

# Original sample text: punctuation, quotes, apostrophes, a double dash, and repeated words.
TEXT = (
    'The lighthouse keeper counted the waves -- one, two, three -- and wrote "calm" in his log. '
    "Nobody asked him why; the sea didn't care either. At dawn he climbed the stairs again: "
    "ninety-two steps, a kettle, a lamp, and the long grey horizon. Was it lonely? Perhaps. "
    "But the gulls knew his name, and the ships (when they came) always slowed to wave."
)

MORE_TEXT = "He watched the ships. The ships watched him -- or so he said, laughing, to the gulls!"
UNKNOWN_TEXT = "The keeper bought a telescope, and the mermaids sang (quietly) to him."
# Text beyond ASCII: accents, CJK, an emoji, a non-breaking space and a tab.
NON_ASCII = "Café crème -- très bien! 東京に行きます; ok? Ünïcödé 🙂 fine\u00a0here\tand there."
HINT_SPLIT = ("section 2.2 (the book's regular expression): re.split with a capturing group keeps the separators; "
              "a separator is one of the punctuation marks , . : ; ? _ ! \" ( ) ', a double dash, or one whitespace "
              "character. Then drop the empty and whitespace-only pieces and strip the others.")

PARTS_FIT = {}  # no test runs the student's code of two cells together: the parts run on stand-ins


def v2_vocab():
    return ref.build_vocab(ref.simple_tokenize(TEXT), special_tokens=["<|endoftext|>", "<|unk|>"])


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="texts"))
def tokenize_texts(student, texts):
    return [student.simple_tokenize(text) for text in texts]


@probe(returns=ListOf(length="cases"))
def build_vocabs(student, cases):
    return [student.build_vocab(tokens, special_tokens=specials) for tokens, specials in cases]


@probe(returns=ListOf(ListOf(), length="texts"))
def encode_texts(student, class_name, vocab, texts):
    """The student's tokenizer class on a correct simple_tokenize (its own is graded by test_simple_tokenize)."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import simple_tokenize

    with replaced(student, simple_tokenize=simple_tokenize):
        tokenizer = getattr(student, class_name)(vocab)
        return [list(tokenizer.encode(text)) for text in texts]


@probe(returns=ListOf(length="id_lists"))
def decode_ids(student, class_name, vocab, id_lists):
    from probe_kit.parts import replaced
    from probe_kit.text_parts import simple_tokenize

    with replaced(student, simple_tokenize=simple_tokenize):
        tokenizer = getattr(student, class_name)(vocab)
        return [tokenizer.decode(ids) for ids in id_lists]


@probe(returns=ListOf(Anything(), length="settings"))
def dataset_windows(student, text, settings):
    """Every window of the student's dataset per (max_length, stride); {"refused": type} when the constructor
    raises AssertionError or ValueError (some editions of the book refuse a text too short for one window)."""
    import tiktoken

    tokenizer = tiktoken.get_encoding("gpt2")
    results = []
    for max_length, stride in settings:
        try:
            dataset = student.GPTDatasetV1(text, tokenizer, max_length=max_length, stride=stride)
        except (AssertionError, ValueError) as exc:
            results.append({"refused": type(exc).__name__})
            continue
        results.append([tuple(dataset[i]) for i in range(len(dataset))])
    return results


@probe(returns=ListOf(ListOf(ListOf()), length="kwargs_list"))
def dataloader_batches(student, text, kwargs_list):
    """The batches of the student's create_dataloader_v1, run on a correct GPTDatasetV1 (its own is graded by the
    dataset tests)."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import GPTDatasetV1

    results = []
    with replaced(student, GPTDatasetV1=GPTDatasetV1):
        for kwargs in kwargs_list:
            torch.manual_seed(kwargs.pop("seed", 0))
            loader = student.create_dataloader_v1(text, **kwargs)
            results.append([tuple(batch) for batch in loader])
    return results


@probe(returns=Fields("first", "second", "after"))
def shuffled_twice(student, text, kwargs):
    """Two epochs of one shuffling loader, and a draw from the global generator after both: .first and .second
    are the batches' inputs, .after the draw (compared with the same draw after torch.manual_seed alone)."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import GPTDatasetV1

    with replaced(student, GPTDatasetV1=GPTDatasetV1):
        torch.manual_seed(7)
        loader = student.create_dataloader_v1(text, **kwargs)
        first = [batch[0].tolist() for batch in loader]
        second = [batch[0].tolist() for batch in loader]
        return {"first": first, "second": second, "after": torch.rand(3).tolist()}


@probe(returns=ListOf(length="token_ids_list"))
def input_embeddings(student, token_weight, pos_weight, token_ids_list):
    token_layer = nn.Embedding(*token_weight.shape).to(DEVICE)
    pos_layer = nn.Embedding(*pos_weight.shape).to(DEVICE)
    with torch.no_grad():
        token_layer.weight.copy_(token_weight)
        pos_layer.weight.copy_(pos_weight)
        return [student.create_input_embeddings(ids, token_layer, pos_layer) for ids in token_ids_list]


# -- section 2.2: tokenizing text ------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("simple_tokenize")
def test_simple_tokenize(submission):
    """simple_tokenize splits on punctuation, double dashes and whitespace, and drops the whitespace."""
    texts = [TEXT, MORE_TEXT, "  Hello,   world.  ", 'Is "this" -- (really) a_test?', NON_ASCII, "", "word"]
    got = submission.run(tokenize_texts, texts=texts)
    for index, (text, tokens) in enumerate(zip(texts, got)):
        expect_equal(tokens, ref.simple_tokenize(text), what=f"simple_tokenize of text {index + 1} ({text[:25]!r})",
                     hint=HINT_SPLIT)


# -- section 2.3: token ids --------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("build_vocab")
def test_build_vocab(submission):
    """build_vocab numbers the sorted distinct tokens from 0, then appends the special tokens."""
    tokens = ref.simple_tokenize(TEXT)
    # Special tokens that are already among the tokens are not graded: the book appends them unchecked.
    cases = [(tokens, []), (tokens, ["<|endoftext|>", "<|unk|>"]), (["b", "a", "b", "a"], ["<|unk|>"]),
             (ref.simple_tokenize(NON_ASCII), ["<|unk|>"]), ([], ["<|unk|>"])]
    got = submission.run(build_vocabs, cases=cases)
    for index, ((case_tokens, specials), vocab) in enumerate(zip(cases, got)):
        expect_equal(vocab, ref.build_vocab(case_tokens, special_tokens=specials),
                     what=f"vocabulary {index + 1} (special tokens {specials})",
                     hint="section 2.3: every distinct token once, in sorted order, numbered from 0; the special "
                          "tokens follow, in the order given. build_vocab(['b', 'a', 'b'], ['<|unk|>']) is "
                          "{'a': 0, 'b': 1, '<|unk|>': 2}.")


# The tokenizers run on a correct simple_tokenize (a stand-in): a tokenizing bug costs test_simple_tokenize only.

tokens_not_in_vocab = error_mentions("KeyError", hint=(
    "every token of these texts is in the vocabulary, so a KeyError means the tokens looked up are not the ones "
    "simple_tokenize gives (e.g. words split at spaces only, with punctuation still attached): tokenize the text "
    "with simple_tokenize, then look the tokens up."))
unknown_words_raise = error_mentions("KeyError", hint=(
    "a word outside the vocabulary must not raise: section 2.4, listing 2.4 maps it to <|unk|> before the lookup."))

@pytest.mark.points(1)
@pytest.mark.runs("SimpleTokenizerV1.encode")
@pytest.mark.stand_ins("simple_tokenize")
def test_tokenizer_v1_encode(submission):
    """SimpleTokenizerV1.encode maps text to the ids of its tokens."""
    vocab = ref.build_vocab(ref.simple_tokenize(TEXT + " " + MORE_TEXT + " " + NON_ASCII))
    texts = [TEXT, MORE_TEXT, NON_ASCII, ""]
    with explain_errors(tokens_not_in_vocab):
        got = submission.run(encode_texts, class_name="SimpleTokenizerV1", vocab=vocab, texts=texts)
    tokenizer = ref.SimpleTokenizerV1(vocab)
    for index, (text, ids) in enumerate(zip(texts, got)):
        expect_equal(ids, tokenizer.encode(text), what=f"token ids of text {index + 1} ({text[:25]!r})",
                     hint="section 2.3, listing 2.3: tokenize the text with simple_tokenize, then replace each "
                          "token by its ID from the vocabulary the tokenizer keeps (self.str_to_int).")


@pytest.mark.points(1)
@pytest.mark.runs("SimpleTokenizerV1.decode")
def test_tokenizer_v1_decode(submission):
    """SimpleTokenizerV1.decode joins the tokens and removes the space before punctuation."""
    vocab = ref.build_vocab(ref.simple_tokenize(TEXT + " " + MORE_TEXT))
    tokenizer = ref.SimpleTokenizerV1(vocab)
    id_lists = [tokenizer.encode(MORE_TEXT), tokenizer.encode('He wrote "calm" (when the ships came), and the sea?'),
                [], tokenizer.encode("gulls")]
    got = submission.run(decode_ids, class_name="SimpleTokenizerV1", vocab=vocab, id_lists=id_lists)
    for index, (ids, text) in enumerate(zip(id_lists, got)):
        expect_equal(text, tokenizer.decode(ids), what=f"decoded text {index + 1}",
                     hint="section 2.3, listing 2.3: look each ID up in self.int_to_str, join the tokens with one "
                          "space, then remove the whitespace in front of each of , . ? ! \" ( ) ' (a substitution "
                          "with re.sub that keeps the punctuation mark). V1 leaves : and ; alone.")


HINT_UNK = ("section 2.4, listing 2.4: before looking the tokens up, replace every token that is not a key of "
            "self.str_to_int by the special token <|unk|>.")
HINT_V2_DECODE = ("section 2.4: decode as V1 does, but also remove the space in front of : and ; (the V2 "
                  "punctuation set is , . : ; ? ! \" ( ) ').")


@pytest.mark.points(2)
@pytest.mark.runs("SimpleTokenizerV2.encode", "SimpleTokenizerV2.decode")
@pytest.mark.stand_ins("simple_tokenize")
def test_tokenizer_v2_unknown_words(submission):
    """SimpleTokenizerV2 maps words outside the vocabulary to <|unk|>, and decodes them as such."""
    vocab = v2_vocab()
    tokenizer = ref.SimpleTokenizerV2(vocab)
    texts = [UNKNOWN_TEXT, "Zebras; quokkas: yes.", NON_ASCII]
    with explain_errors(unknown_words_raise):
        got = submission.run(encode_texts, class_name="SimpleTokenizerV2", vocab=vocab, texts=texts)
    expect_equal(got, [tokenizer.encode(text) for text in texts],
                 what="token ids of texts with unknown words", hint=HINT_UNK)
    ids = tokenizer.encode(UNKNOWN_TEXT)
    (decoded,) = submission.run(decode_ids, class_name="SimpleTokenizerV2", vocab=vocab, id_lists=[ids])
    expect_equal(decoded, tokenizer.decode(ids), what="decoded text with <|unk|> tokens", hint=HINT_V2_DECODE)


@pytest.mark.points(1)
@pytest.mark.runs("SimpleTokenizerV2.encode", "SimpleTokenizerV2.decode")
@pytest.mark.stand_ins("simple_tokenize")
def test_tokenizer_v2_endoftext(submission):
    """SimpleTokenizerV2 keeps <|endoftext|> between joined texts, through encode and decode."""
    vocab = v2_vocab()
    tokenizer = ref.SimpleTokenizerV2(vocab)
    text = " <|endoftext|> ".join(["The sea didn't care.", "Was it lonely? Perhaps: the gulls knew."])
    expected = tokenizer.encode(text)
    (ids,) = submission.run(encode_texts, class_name="SimpleTokenizerV2", vocab=vocab, texts=[text])
    expect_equal(ids, expected, what="token ids of two texts joined by <|endoftext|>",
                 hint="<|endoftext|> is one token of the vocabulary: it must keep its own ID.")
    (decoded,) = submission.run(decode_ids, class_name="SimpleTokenizerV2", vocab=vocab, id_lists=[expected])
    expect_equal(decoded, tokenizer.decode(expected), what="decoded text with <|endoftext|>", hint=HINT_V2_DECODE)


# -- section 2.6: data sampling with a sliding window ----------------------------------------------------------

def reference_windows(text, max_length, stride):
    dataset = ref.GPTDatasetV1(text, get_gpt2_tokenizer(), max_length=max_length, stride=stride)
    return [tuple(dataset[i]) for i in range(len(dataset))]


def expect_pairs(got, expected, *, what, unit, count_hint, hint):
    """Compare lists of (inputs, targets) pairs: the count first, then each pair with a readable label."""
    expect_true(isinstance(got, list), what=what, problem="the constructor raised an AssertionError or ValueError "
                "for a text long enough for at least one window.", hint=count_hint)
    expect_count(len(got), len(expected), what=f"{what}: number of {unit}s", hint=count_hint)
    for index, (got_pair, expected_pair) in enumerate(zip(got, expected)):
        expect_count(len(got_pair), 2, what=f"{what}: {unit} {index}: number of tensors",
                     hint="each item is a pair (inputs, targets).")
        for part, got_part, expected_part in zip(("inputs", "targets"), got_pair, expected_pair):
            expect_equal(got_part, expected_part, what=f"{what}: {unit} {index}, {part}", hint=hint)


HINT_WINDOW_COUNT = ("section 2.6, listing 2.5: a window starts at token 0, then every `stride` tokens, as long as "
                     "its targets (one token further) still fit in the text; a text of N tokens gives one window "
                     "per start below N - max_length.")
HINT_WINDOW = ("window k starts at token k * stride: its inputs are the max_length token IDs from there, its "
               "targets the same number of IDs one token further on (drawing of section 2.6).")


@pytest.mark.points(3)
@pytest.mark.runs("GPTDatasetV1")
def test_dataset_windows(submission):
    """GPTDatasetV1: every input window and its target (shifted by one), for several max_length/stride pairs."""
    settings = [(4, 1), (4, 4), (6, 5), (3, 7), (8, 2)]
    got = submission.run(dataset_windows, text=TEXT, settings=settings)
    for (max_length, stride), windows in zip(settings, got):
        expect_pairs(windows, reference_windows(TEXT, max_length, stride),
                     what=f"GPTDatasetV1 with max_length={max_length}, stride={stride}", unit="window",
                     count_hint=HINT_WINDOW_COUNT, hint=HINT_WINDOW)
    (windows,) = submission.run(dataset_windows, text=NON_ASCII, settings=[(5, 3)])
    expect_pairs(windows, reference_windows(NON_ASCII, 5, 3), unit="window",
                 what="GPTDatasetV1 on a text with accents, Japanese and an emoji (max_length=5, stride=3)",
                 count_hint=HINT_WINDOW_COUNT, hint=HINT_WINDOW)


@pytest.mark.points(1)
@pytest.mark.runs("GPTDatasetV1")
def test_dataset_short_texts(submission):
    """GPTDatasetV1 on texts of exactly max_length and max_length + 1 tokens (and with <|endoftext|>)."""
    text = "The gulls knew his name. <|endoftext|> The ships slowed."
    length = len(get_gpt2_tokenizer().encode(text, allowed_special={"<|endoftext|>"}))
    settings = [(length, 1), (length - 1, 1), (length - 1, 3)]
    got = submission.run(dataset_windows, text=text, settings=settings)
    for (max_length, stride), windows in zip(settings, got):
        if max_length == length and isinstance(windows, dict):
            continue  # no window fits: refusing the text is accepted as well as an empty dataset
        expect_pairs(windows, reference_windows(text, max_length, stride), unit="window",
                     what=f"GPTDatasetV1 on a {length}-token text with max_length={max_length}, stride={stride}",
                     count_hint="a window needs max_length + 1 tokens (its targets are shifted by one), so a text "
                                "of max_length tokens gives none and one of max_length + 1 tokens gives exactly one.",
                     hint="<|endoftext|> is one token here: GPT-2's tokenizer encodes it only when it is passed "
                          "in allowed_special (section 2.5).")


# -- section 2.6: batches (create_dataloader_v1 runs on a correct GPTDatasetV1, a stand-in) ----------------------

HINT_LOADER = ("section 2.6, listing 2.6: build GPT-2's tokenizer and your dataset, and hand every argument of "
               "create_dataloader_v1 (batch_size, shuffle, drop_last, num_workers) on to the DataLoader by name.")


@pytest.mark.points(2)
@pytest.mark.runs("create_dataloader_v1")
@pytest.mark.stand_ins("GPTDatasetV1")
def test_dataloader_batches(submission):
    """create_dataloader_v1: batches of GPT-2 token ids, with and without drop_last (shuffle off)."""
    # TEXT has 87 GPT-2 tokens: with max_length 4 and stride 2 the last window starts at token 82, the last
    # possible start, and its 42 windows leave a partial batch of 2 for drop_last to drop.
    kwargs_list = [
        {"batch_size": 4, "max_length": 4, "stride": 2, "shuffle": False, "drop_last": True},
        {"batch_size": 4, "max_length": 4, "stride": 2, "shuffle": False, "drop_last": False},
        {"batch_size": 2, "max_length": 6, "stride": 3, "shuffle": False},
        {"batch_size": 1, "max_length": 5, "stride": 5, "shuffle": False, "drop_last": False},
    ]
    got = submission.run(dataloader_batches, text=TEXT, kwargs_list=[dict(k) for k in kwargs_list])
    for kwargs, batches in zip(kwargs_list, got):
        expected = [tuple(batch) for batch in ref.create_dataloader_v1(TEXT, **kwargs)]
        arguments = ", ".join(f"{key}={value}" for key, value in kwargs.items())
        expect_pairs(batches, expected, what=f"create_dataloader_v1({arguments})", unit="batch",
                     count_hint="drop_last=True drops a last batch smaller than batch_size, drop_last=False keeps "
                                "it: " + HINT_LOADER, hint=HINT_LOADER)


@pytest.mark.points(1)
@pytest.mark.runs("create_dataloader_v1")
@pytest.mark.stand_ins("GPTDatasetV1")
def test_dataloader_shuffle(submission):
    """create_dataloader_v1(shuffle=True) yields the same windows as shuffle=False, in the order torch's random
    generator gives, without reseeding that generator."""
    kwargs = {"batch_size": 1, "max_length": 4, "stride": 4, "drop_last": False}
    ordered, shuffled = submission.run(dataloader_batches, text=TEXT, kwargs_list=[
        dict(kwargs, shuffle=False), dict(kwargs, shuffle=True, seed=123)])
    expect_count(len(shuffled), len(ordered), what="number of batches with shuffle=True",
                 hint="shuffling changes the order of the windows, not their number.")
    for batch in ordered + shuffled:
        expect_true(all(isinstance(part, torch.Tensor) for part in batch), what="create_dataloader_v1 batches",
                    problem="hold something other than tensors.", hint="iterate over a torch DataLoader.")
    as_lists = lambda batches: [[t.tolist() for t in batch] for batch in batches]  # noqa: E731
    expect_true(sorted(as_lists(shuffled)) == sorted(as_lists(ordered)), what="windows with shuffle=True",
                problem="are not the same windows as with shuffle=False.")
    expect_true(as_lists(shuffled) != as_lists(ordered), what="order of the windows with shuffle=True",
                problem="is the same as with shuffle=False: the shuffle argument is ignored.", hint=HINT_LOADER)
    # Shuffling draws from torch's global generator, which the caller seeds (torch.manual_seed before training).
    arguments = dict(kwargs, shuffle=True)
    got = submission.run(shuffled_twice, text=TEXT, kwargs=arguments)
    expected = run_here(shuffled_twice, ref, text=TEXT, kwargs=arguments)  # the reference, on the same stand-in
    expect_true(got.first == expected.first and got.after == expected.after,
                what="create_dataloader_v1(shuffle=True) after torch.manual_seed(7)",
                problem="does not give the order the caller's seed gives (or changes torch's random state): "
                        "the function reseeds or replaces torch's global random generator.",
                hint="leave seeding to the caller: no torch.manual_seed (and no generator of its own) inside "
                     "create_dataloader_v1; the DataLoader draws its shuffle from the global generator.")
    expect_true(got.second != got.first, what="two epochs of create_dataloader_v1(shuffle=True)",
                problem="give the windows in the same order: the shuffle is not redrawn each epoch.",
                hint="let the DataLoader shuffle (shuffle=...) instead of shuffling the dataset once.")


# -- section 2.8: token and position embeddings ----------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("create_input_embeddings")
def test_input_embeddings(submission):
    """create_input_embeddings adds position embeddings (0..num_tokens-1) to the token embeddings."""
    generator = torch.Generator().manual_seed(42)
    token_weight = torch.randn(50, 6, generator=generator)
    pos_weight = torch.randn(8, 6, generator=generator)
    token_ids_list = [torch.randint(0, 50, (2, 8), generator=generator),
                      torch.randint(0, 50, (3, 5), generator=generator),
                      torch.randint(0, 50, (1, 1), generator=generator)]
    got = submission.run(input_embeddings, token_weight=token_weight, pos_weight=pos_weight,
                         token_ids_list=token_ids_list)
    token_layer, pos_layer = nn.Embedding.from_pretrained(token_weight), nn.Embedding.from_pretrained(pos_weight)
    for ids, embeddings in zip(token_ids_list, got):
        expect_close(embeddings, ref.create_input_embeddings(ids, token_layer, pos_layer),
                     what=f"input embeddings of token ids of shape {tuple(ids.shape)}",
                     hint="section 2.8: look the token IDs up in the token embedding layer, look the positions "
                          "0, 1, ..., num_tokens - 1 up in the position embedding layer (on the device of the "
                          "token IDs), and add the two: broadcasting adds the same positions to every row.")
