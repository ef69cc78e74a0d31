"""The stream app's own Kafka I/O beside Faust's: the event decider (its own consumer, in
batches), its producer, the policy mirror's consumer, and the client options they share.
"""
