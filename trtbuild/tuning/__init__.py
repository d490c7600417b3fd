"""Making and choosing speculative settings on this machine: `train_medusa` (heads on a frozen
base), `tune_medusa` (a tree from measured head accuracy), `tune_lookahead` ((W, N, G) by measured
speed). Every measurement decodes through trtbuild.runtime (`measure`).

May import: trtbuild.common, trtbuild.convert, trtbuild.runtime."""
