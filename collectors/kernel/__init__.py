"""The kernel interfaces: the process connector, fanotify, /proc and the scheduler, as thin
bindings. They know nothing of workloads, Kafka or verdicts; every other room builds on them.
"""
