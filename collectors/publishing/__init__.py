"""Getting the collector's records out: the Kafka producer, the disk spool for when Kafka cannot
be reached, and the private files of the state folder. Nothing here decides what is published.
"""
