"""SIEM forwarding: incidents as syslog (RFC 5424, JSON or CEF) and JSON webhooks."""
