"""Judges: each turns one condition's answers into a judgments table with the same columns.

Every judge writes ``io.JUDGMENT_COLUMNS`` with score 1 = compliance, 0 = refusal and an
empty score where the judge's output could not be parsed (kept and counted, never
dropped). Two judges exist behind that one table format:

- ``strmatch`` (``judges.strmatch``): a transparent refusal-phrase matcher, for the offline
  demo; it is not the official SORRY-Bench judge.
- ``official`` (``judges.official``): the official SORRY-Bench judge, run with the
  benchmark's own script in its own environment.

What both share lives beside them: ``judges.records`` reads the answers against the
question list and builds the table; ``judges.agreement`` compares two judges (Cohen's
kappa and the confusion table).
"""
