"""From a process to the facts the stream app judges: its workload (container or node), its exec
event, file changes, reverse shells and root escalations. Sensing only reports; it never acts.
"""
