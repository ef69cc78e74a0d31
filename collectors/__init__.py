"""The per-node collector: senses every exec, publishes it, enforces the verdicts.

Its rooms, each importing only the rooms below it: `enforcement` > `sensing` > `publishing` >
`kernel`. `agent.py` composes them into the running collector; `settings.py` is its settings.
"""
