"""Caption generation: decoding loops and search strategies."""
