"""The stream app: every decision, made by the pure engine, with the policy API beside it.

Its rooms, each importing only the rooms below it: `web`, `kafka` and `offline` (independent of
each other) > `worker` > `engine`. `app.py` composes them into the Faust app; `settings.py` is its
settings.
"""
