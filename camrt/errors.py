"""Exceptions raised by camrt. Each message says what is wrong and how to fix it; the CLI prints
it as one line."""


class CamrtError(Exception):
    """Base class of every error camrt raises on purpose."""


class ModelLoadError(CamrtError):
    """The model file is missing, unreadable, of an unknown format, or not allowed to load."""


class LayerError(CamrtError):
    """A target layer is unknown, runs more or less than once per forward, or is not a feature map."""


class ExportError(CamrtError):
    """The model could not be traced or written to ONNX."""


class UnsupportedOpError(ExportError):
    """The model uses an operator that the export route cannot translate."""


class VerificationError(ExportError):
    """The exported graph disagrees with eager PyTorch on a fresh input."""


class InputError(CamrtError):
    """An argument or run-time input is invalid (shape, class index, path, option)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message, at most `limit` characters (its type's name when it has
    no message): how a third-party exception is quoted inside a camrt one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
