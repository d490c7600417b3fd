"""One exception hierarchy for the library; trtbuild.cli turns it into one-line errors with exit code 1."""


class TrtbuildError(Exception):
    """Base of every error trtbuild raises on purpose (bad input, bad state)."""


class ConfigError(TrtbuildError):
    """An option, spec or config.json value is invalid or unsupported."""


class ConversionError(TrtbuildError):
    """A checkpoint cannot be converted: missing/extra/mis-shaped tensors, uneven splits."""


class CheckpointError(TrtbuildError):
    """A checkpoint on disk cannot be read: corrupt file, unsafe pickle, wrong layout."""


class GenerationError(TrtbuildError):
    """A generation request is invalid (empty prompt, too long, bad sampling parameters)."""


class BuildError(TrtbuildError):
    """An engine cannot be built, or a built engine failed its self-check."""
