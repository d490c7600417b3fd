"""Lookahead decoding: the (W, N, G) spec, the n-gram pool, and tuning on this machine."""
