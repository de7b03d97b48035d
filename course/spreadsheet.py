"""The cells of the CSV files an instructor opens in a spreadsheet: text a spreadsheet shows, never runs.

A spreadsheet (Excel, LibreOffice Calc, Google Sheets) runs a cell that starts with `=`, `+`, `-` or `@` as a
formula, and some also after a leading tab or carriage return ("CSV injection", OWASP). A student controls
some of these cells: their id is the name of their folder, e.g. `=HYPERLINK("http://...")`. Every CSV the
course writes for instructors (`course grade`'s grades.csv, and `nbgrader export` through
course/nbgrader_export.py) passes each cell through `spreadsheet_cell`:

- a cell that starts with one of those characters, or with a single quote, gets one single quote `'` in front;
- every other cell is written as it is.

The quote makes a spreadsheet take the cell as text. The rule can be undone, so ids stay joinable with a roster:
the original text is the cell without its one leading quote, if it starts with one (`spreadsheet_text`). A
spreadsheet that hides the quote (Excel takes a leading quote as "text" and does not show it) shows the original
text; a program (pandas, Python's csv module, a database import) reads the quote, so remove it there:
`df["student_id"].str.removeprefix("'")` in pandas. Quoting a cell that already starts with a quote is what keeps
both readings right: `'abc` is written `''abc`.
"""

from __future__ import annotations

# What makes a spreadsheet read a cell as a formula, when it comes first: OWASP's list (= + - @, tab, carriage
# return), line feed and NUL (other lists add them), and the full-width forms of = + - @ (some spreadsheets
# normalise them). The quote itself is in the list so that the rule can be undone (see the module).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\0", "\uff1d", "\uff0b", "\uff0d", "\uff20", "'")


def spreadsheet_cell(text: str) -> str:
    """`text` as a CSV cell that a spreadsheet shows as text: one `'` in front if it could start a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def spreadsheet_text(cell: str) -> str:
    """The text that `spreadsheet_cell` made `cell` from: the cell without its one leading quote, if any."""
    return cell[1:] if cell.startswith("'") else cell
