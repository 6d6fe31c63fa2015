"""Client tools: the demo stream, the synthetic data, `tail`."""
