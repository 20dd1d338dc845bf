"""One exception family so callers (and the CLI) can tell user errors from bugs."""


class DitaccelError(Exception):
    """A problem with the user's input or files; the message is one line that names the fix."""


class UnsupportedModelError(DitaccelError):
    """The transformer's family has no adapter."""


class ScheduleError(DitaccelError):
    """A cache schedule is malformed or does not fit the model."""


class QuantizedCheckpointError(DitaccelError):
    """A quantized folder is missing, truncated or made for another model."""


class MissingWeightsError(DitaccelError):
    """A metric or model needs weights that are not on this machine."""


class UsageError(DitaccelError):
    """The command line itself is wrong (unknown flag, bad number); the message names ``--help``."""


class Interrupted(Exception):
    """A long command was stopped (Ctrl-C); the message says what it kept and how to go on."""
