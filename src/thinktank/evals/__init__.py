"""Evaluations: which answers are better, measured on the user's own questions.

- :mod:`.dataset` reads a dataset (JSONL or CSV, or JSON objects from a request body) into
  :class:`~.dataset.EvalItem` values: the question (or a message list), an optional reference answer,
  tags and per-item checks. A bad line is reported with its number and the rest goes on.
- :mod:`.check_types` holds the checks as data (a pydantic union on ``type``: contains, regex, JSON and JSON
  schema, numeric closeness, similarity to the reference, citations, cost and latency ceilings, an LLM
  rubric, and ``all`` / ``any`` / ``not`` of others); :mod:`.checks` applies them to an answer
  (:func:`~.checks.run_checks`), asking a judge model for a rubric through the caller's ``ask``.
- :mod:`.patterns` runs user regular expressions with a size guard and a timeout; :mod:`.answer_text` reads
  numbers, JSON and citation markers out of an answer; :mod:`.rubric` writes a rubric's prompt and reads the
  judge's verdict.

Nothing here does I/O on import or imports anything heavy: the regex and JSON-schema engines load when a
check needs them.
"""
