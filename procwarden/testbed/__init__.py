"""Real containers and helpers for integration tests and the demo."""
