"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""


class MotifError(Exception):
    """Bad input from the user: a file, key or value that is wrong. The message names it."""


class CheckpointError(MotifError):
    """A checkpoint that is missing, incomplete, corrupt or of an unknown format."""


class GrowthError(MotifError):
    """A growth target that cannot be reached from the source shape."""


class DataError(MotifError):
    """A data source or tokenizer that cannot be read."""


class WriteError(CheckpointError, OSError):
    """A checkpoint or output that could not be written (a full disk, a failing volume). Still an
    OSError for callers that handle I/O errors; the CLI prints it as one line like any MotifError."""
