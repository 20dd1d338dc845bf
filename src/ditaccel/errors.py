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
