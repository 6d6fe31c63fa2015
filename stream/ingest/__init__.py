"""Events in: decoding and validating messages, and scoring a batch."""
