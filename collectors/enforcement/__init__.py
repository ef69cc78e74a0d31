"""Acting on verdicts: the verdict reader that kills and releases, the checks a verdict must pass
first, and the exec answerer (with its compiled wait) that holds execs and writes before they run.
"""
