"""Build ``data/bpe/mixed_text.txt``, the test text of the byte-level BPE tokenizer (``reference/bpe.py``).

Everything in it was written for this project. Hand-written sections (``sections/*.txt``: prose, source
code in several languages, many scripts, emoji, symbols) come first; generated sections follow
(whitespace and control characters, numbers in many formats, log lines, tables, and a seeded word salad
that mixes scripts, digits, punctuation and odd whitespace). Documents are separated by
``<|endoftext|>``. The output is deterministic; ``tests/test_reference_bpe.py`` checks that the committed
file is exactly what this script writes.

    python data/bpe/build_corpus.py          # rewrite mixed_text.txt
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "mixed_text.txt"
SEPARATOR = "\n<|endoftext|>\n"
MIN_SIZE = 60_000  # bytes of UTF-8; the word salad fills up to this


def whitespace_section() -> str:
    """Runs of spaces, tabs, all kinds of line breaks and Unicode spaces, written with escapes."""
    lines = [
        "Whitespace torture section.",
        "Two  spaces,  three   spaces,   four    spaces,    eight        spaces        end.",
        "Trailing spaces on this line.   ",
        "Trailing tab on this line.\t",
        "\tLeading tab.",
        "\t\tTwo leading tabs.",
        "    Four leading spaces.",
        " One leading space.",
        "Mixed \t tab and space \t runs \t here.",
        "Space before newline \n and after.",
        "Blank lines follow.\n\n",
        "Three blank lines follow.\n\n\n",
        "Then text again.",
        "Windows line endings:\r\nfirst line\r\nsecond line\r\n\r\nafter a blank CRLF line",
        "Old Mac line ending:\rthird line\r\rtwo CRs",
        "Form feed:\x0cnext page. Vertical tab:\x0bhere. Backspace:\x08! Bell:\x07! Escape:\x1b[0m.",
        "Unit separators: a\x1fb\x1ec\x1dd\x1ce. Escape sequence again:\x1b[1;31m. DEL:\x7fend.",
        "Next line (NEL):\x85after; line separator:\u2028after; paragraph separator:\u2029after.",
        "Other spaces: no\u00a0break\u00a0here, thin\u2009space, hair\u200aspace, ideographic\u3000space, "
        "en\u2002space, em\u2003space, figure\u2007space, narrow\u202fnbsp 10\u202fkm, medium\u205fmath, "
        "ogham\u1680space.",
        "Zero-width: a\u200bb (ZWSP), a\u200cb (ZWNJ), a\u200db (ZWJ), soft\u00adhyphen, word\u2060joiner, "
        "BOM\ufeffhere.",
        "Combining marks: e\u0301 (e + U+0301) is not \u00e9; n\u0303, A\u030a, q\u0323\u0307, "
        "z\u0337\u0322\u0359a\u0334l\u0335g\u0336o\u0338, \u0915\u094d\u0937 (Devanagari conjunct).",
        "Spaces before punctuation : ; ! ? , . and after punctuation.  ,  .  ;",
        "Numbers with spaces: 1 000 000 and 1,000,000 and 1.000.000 and 1'000'000 and 1_000_000.",
        "Contractions: I'm, you're, he's, she'll, we've, they'd, it's, don't, can't, won't, y'all, o'clock.",
        "UPPER CASE CONTRACTIONS: I'M, YOU'RE, HE'S, SHE'LL, WE'VE, THEY'D, DON'T.",
        "Quotes: 'single', \"double\", \u2018curly single\u2019, \u201ccurly double\u201d, \u201eGerman\u201c, "
        "\u00abFrench\u00bb, \u300cJapanese\u300d.",
        "Apostrophes: rock 'n' roll, '90s, the '80s', Ma'am, ' s, 's, ''s, ''', it\u2019s (curly).",
        "Dashes: em\u2014dash, en\u2013dash, hyphen-minus, minus \u2212 sign, ---, --, -.",
        "Ellipses: wait... what\u2026? Really?! Yes!!! No??? Hmm.....",
        "Brackets: (round) [square] {curly} <angle> \u27e8math\u27e9 ((nested (deeply)))",
        "Punctuation runs: !!! ??? ... ;;; ::: ,,, --- ___ *** ### @@@ $$$ %%% ^^^ &&& ||| ~~~ ``` \\\\\\ /// "
        "=== +++ <<< >>>",
        "Single characters: a b c 1 2 3 ! ? . , ; : ' \" ( ) [ ] { } < > / \\ | @ # $ % ^ & * _ + = ~ `",
        "Special-token look-alikes: <|endoftext| and |endoftext|> and <|endoftext |> and < |endoftext|>.",
        "Ends with spaces and newlines   \n  \n",
    ]
    return "\n".join(lines)


def numbers_section(rng: random.Random) -> str:
    """Numbers as people write them: dates, times, money, measurements, identifiers."""
    lines = ["Numbers in many formats."]
    for _ in range(120):
        kind = rng.randrange(12)
        if kind == 0:
            lines.append(f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                         f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")
        elif kind == 1:
            lines.append(f"{rng.uniform(-1e6, 1e6):,.2f} EUR, {rng.randint(0, 10**12)} units, {rng.random():.17f}")
        elif kind == 2:
            lines.append(
                f"{rng.uniform(1e-12, 1e12):.6e} and {-rng.uniform(0, 1e-3):.3E} and {rng.randint(0, 255):#04x}"
            )
        elif kind == 3:
            lines.append(
                f"+{rng.randint(1, 99)} ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(0, 9999):04d}"
            )
        elif kind == 4:
            lines.append(".".join(str(rng.randint(0, 255)) for _ in range(4)) + f":{rng.randint(1, 65535)}")
        elif kind == 5:
            lines.append(
                f"{rng.randint(0, 100)}% of {rng.randint(1, 10**6)}; {rng.randint(1, 9)}/{rng.randint(10, 99)}; "
                f"{rng.randint(0, 999)}\u00b0C"
            )
        elif kind == 6:
            lines.append("".join(rng.choice("0123456789") for _ in range(rng.randint(10, 40))))
        elif kind == 7:
            lines.append(f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}, "
                         f"#{rng.randint(1, 99999)}, No. {rng.randint(1, 500)}, {rng.randint(1, 31)}st/nd/rd/th")
        elif kind == 8:
            lines.append(f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} {rng.choice(['AM', 'PM', 'am', 'pm'])} \u2013 "
                         f"{rng.randint(0, 23)}h{rng.randint(0, 59):02d}")
        elif kind == 9:
            lines.append(f"{rng.randint(1, 9999)}x{rng.randint(1, 9999)} px @ {rng.randint(24, 240)} fps, "
                         f"{rng.uniform(0, 100):.1f}kg, {rng.randint(1, 500)}km/h")
        elif kind == 10:
            lines.append(
                f"\u00a5{rng.randint(100, 99999)}  \u00a3{rng.uniform(0, 1000):.2f}  ${rng.randint(1, 10**7):,}  "
                f"\u20b9{rng.randint(1, 10**5)}  {rng.randint(1, 1000)}\u20ac"
            )
        else:
            lines.append(f"{rng.randint(-999, 999)} {rng.randint(-9, 9)}{rng.randint(0, 9)}e{rng.randint(-30, 30)} "
                         f"0b{rng.getrandbits(12):012b} 0o{rng.randint(0, 4095):o} {rng.randint(1, 3999)}th")
    return "\n".join(lines)


def log_section(rng: random.Random) -> str:
    """Log lines: timestamps, levels, paths, key=value pairs, quoted strings, tabs."""
    levels = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR", "CRITICAL"]
    services = ["api-gateway", "auth", "billing", "search-indexer", "thumbnailer", "mailer"]
    messages = [
        "request completed", "cache miss for key", "retrying after timeout", "user logged in",
        "payment declined", "disk usage above threshold", "connection reset by peer", "job finished",
    ]
    lines = []
    for _ in range(140):
        ts = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:" \
             f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}"
        path = "/" + "/".join(rng.choice(["v1", "users", "orders", "items", str(rng.randint(1, 99999)), "search"])
                              for _ in range(rng.randint(1, 4)))
        lines.append(
            f"{ts}\t{rng.choice(levels):<8}\t[{rng.choice(services)}]\t{rng.choice(messages)} "
            f"path={path} status={rng.choice([200, 201, 204, 301, 400, 401, 403, 404, 500, 503])} "
            f"latency_ms={rng.uniform(0.1, 2500):.1f} user=\"u{rng.randint(1, 10**6)}\""
        )
    return "\n".join(lines)


def table_section(rng: random.Random) -> str:
    """A Markdown table and CSV rows with accents and quotes."""
    cities = ["Z\u00fcrich", "S\u00e3o Paulo", "K\u00f8benhavn", "\u6771\u4eac", "M\u00fcnchen", "Reykjav\u00edk",
              "Krak\u00f3w", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u0627\u0644\u0642\u0627\u0647\u0631\u0629",
              "Montr\u00e9al", "\uc11c\uc6b8", "Ciudad de M\u00e9xico"]
    lines = ["| city | population | area (km\u00b2) | founded |", "|---|---:|---:|---|"]
    for city in cities:
        lines.append(f"| {city} | {rng.randint(10**5, 4 * 10**7):,} | {rng.uniform(50, 2500):.1f} | "
                     f"{rng.randint(100, 1900)} |")
    lines.append("")
    lines.append('id,name,comment,score')
    for i in range(30):
        lines.append(f'{i},"{rng.choice(cities)}","he said ""hi"", then left",{rng.uniform(0, 1):.4f}')
    return "\n".join(lines)


# Characters for the word salad, from blocks assigned long ago (stable across Unicode versions).
_SALAD_RANGES = [
    (0x41, 0x5A), (0x61, 0x7A), (0x30, 0x39), (0x21, 0x2F), (0xC0, 0xFF), (0x100, 0x17F), (0x391, 0x3C9),
    (0x410, 0x44F), (0x5D0, 0x5EA), (0x627, 0x64A), (0x905, 0x939), (0x93E, 0x94D), (0xE01, 0xE2E),
    (0x3041, 0x3093), (0x30A1, 0x30F3), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x2190, 0x21FF),
    (0x2200, 0x22FF), (0x1F600, 0x1F64F), (0x1F300, 0x1F3FF), (0x300, 0x36F), (0x660, 0x669),
]
_SEPARATORS = [" "] * 12 + ["  ", "   ", "\t", "\n", "\r\n", " \n", "\n ", "\n\n", "\t\t", " \t", "\u00a0",
                            "\u3000", "", "", "'s ", "'ll ", "--", "... "]


def word_salad(rng: random.Random, source_words: list[str], size: int) -> str:
    """Words from the hand-written sections and random strings of mixed scripts, with odd separators."""
    pieces = []
    length = 0
    while length < size:
        choice = rng.random()
        if choice < 0.55:
            word = rng.choice(source_words)
            word = word.upper() if rng.random() < 0.1 else word
        elif choice < 0.85:
            low, high = rng.choice(_SALAD_RANGES)
            word = "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 8)))
        else:
            word = str(rng.randint(0, 10 ** rng.randint(1, 12)))
        piece = word + rng.choice(_SEPARATORS)
        pieces.append(piece)
        length += len(piece.encode("utf-8"))
    return "".join(pieces)


def build() -> str:
    """The whole test text."""
    rng = random.Random(20240601)
    documents = [path.read_text(encoding="utf-8") for path in sorted((HERE / "sections").glob("*.txt"))]
    documents += [whitespace_section(), numbers_section(rng), log_section(rng), table_section(rng)]
    text = SEPARATOR.join(documents)
    source_words = sorted({word for document in documents[:4] for word in document.split()})
    missing = MIN_SIZE - len((text + SEPARATOR).encode("utf-8"))
    if missing > 0:
        text += SEPARATOR + word_salad(rng, source_words, missing)
    return text + "\n"


if __name__ == "__main__":
    text = build()
    # newline="" writes "\r\n" and "\r" as they are, without translation.
    with open(OUTPUT, "w", encoding="utf-8", newline="") as file:
        file.write(text)
    print(f"wrote {OUTPUT} ({len(text.encode('utf-8')):,} bytes, {len(text):,} characters)")
