"""What the stream worker does with each message, whatever brought it: the handlers, the decision
session they feed, and the sender checks on what comes in and the signatures on what goes out.
No Kafka client and no HTTP here: the rooms above bring the messages and carry the outputs away.
"""
