"""The local single-node stack: Kafka (KRaft) and ClickHouse, started by procwarden itself."""

from procwarden.stack.layout import StackLayout, StackSettings
from procwarden.stack.processes import StackError
from procwarden.stack.stack import Stack, StackStatus

__all__ = ["Stack", "StackError", "StackLayout", "StackSettings", "StackStatus"]
