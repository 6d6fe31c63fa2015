"""Per-entity feature windows: the pure window math and its Redis store."""
