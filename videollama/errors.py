"""The one base class of every error a user can fix.

Anything raised as a :class:`VideoLlamaError` (or a subclass) is the user's to fix: a missing,
damaged or wrong file, bad media, a bad config or request, a dataset with no usable records, a
missing optional dependency. The CLI prints it as one ``error: ...`` line and exits with status 2;
a library caller catches ``VideoLlamaError`` once instead of a dozen classes. Any other exception
is a bug in videollama: the CLI shows its traceback and exits with status 1.

Subclasses keep a builtin base where callers relied on one (``MediaError`` is also a
``ValueError``), so ``except ValueError`` in older code still works. Every subclass is defined next
to the component that raises it:

==========================  ====================================================  =================
class                       raised when                                           module
==========================  ====================================================  =================
``MediaError``              unreadable, empty, truncated, over-limit media        ``media.errors``
``NoAudioError`` /          the file has no usable audio / video stream           ``media.errors``
``NoVideoError``
``ModelConfigError``        a model ``config.json`` with unknown keys or bad      ``config``
                            values
``ModelFolderError``        a model folder with missing, unknown or misshapen     ``model.checkpoint``
                            weights
``LoadingError``            a loading option this machine cannot honour           ``model.loading``
``ConversionError``         ``convert`` found unknown, missing or bad keys        ``convert.report``
``CheckpointReadError``     a weight file that cannot be read safely              ``convert.safe_load``
``ConfigError``             a training YAML or override that is wrong             ``train.config``
``DatasetError``            a dataset with no usable records                      ``train.data``
``TrainingCheckpointError`` a training checkpoint that is damaged or missing      ``train.checkpoint``
``GenerationError``         a generation request that cannot be served            ``engine``
``DataError`` / ``EvalError``  an evaluation set or judge that cannot be used     ``eval``
==========================  ====================================================  =================
"""

from __future__ import annotations

__all__ = ["UsageError", "VideoLlamaError"]


class VideoLlamaError(Exception):
    """Base of every error the user can fix; its message is one line naming the problem."""


class UsageError(VideoLlamaError, ValueError):
    """A command-line or API argument that is out of range or contradicts another one."""
