"""Sinks: ClickHouse storage for the SOC and SIEM forwarding."""
