"""Delayed labels: predictions waiting for their labels, and the join."""
