"""After grading: what an instructor does with a graded class, for `course grade DIR` and `course gradebook`.

Both ways of grading a class become the same records, which go through the same writers:

    sources.py    course grade's results (in memory or its JSON files) and nbgrader's gradebook -> entries
    times.py      when each submission was handed in: nbgrader's timestamp.txt, else the repository's last commit
    gitcommit.py  that commit's time, read from the repository's files without running git
    roster.py     the class list: students without a submission ("missing"), submissions not on it
    late.py       days after the deadline and what the course's late policy takes for them
    overrides.py  points set by hand, with a reason
    book.py       the entries joined, checked and computed into rows
    table.py      grades.csv (spreadsheet-safe; a UTF-8 byte-order mark for Excel on request)
    feedback.py   a Markdown file and a self-contained HTML page per student, safe to publish
    figures.py    the class in numbers (score distribution, pass rate per test) and the terminal summary
    plots.py      the same numbers as a PNG, and as JSON beside it
    publish.py    the one path from entries to every file
    regrade.py    grading one student, or one test of every submission, again into the existing results
    csvfile.py    strict reading of the instructor's CSV files (errors name the file, line and column)
"""
