"""Medusa trees as data: `medusa_choices` (parsing, presets, canonical form) and the buffers a
verifier needs (`tree`). Head files are converted by trtbuild.convert, trees decoded by
trtbuild.runtime.decoding, heads trained and trees tuned by trtbuild.tuning."""
