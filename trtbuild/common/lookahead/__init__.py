"""Lookahead decoding as data: the (W, N, G) spec (`spec`), the n-gram pool (`pool`) and the
layout of one step's tokens (`layout`). Decoding is trtbuild.runtime.decoding, tuning
trtbuild.tuning.tune_lookahead."""
