"""Deciding without Kafka: `procwarden decide` replays wire messages from files through the same
session and engine the stream worker uses.
"""
