"""Error texts for the person in front of ComfyUI.

ComfyUI shows an exception's class by its module path, which for a custom-node pack is the
pack's folder path turned into a module name. So a node re-raises every problem with its
input as a plain ``ValueError`` (or ``FileNotFoundError``) whose text starts with the node's
display name and names the input, and chains the original exception (``from``): ComfyUI's
console log keeps the full developer detail and traceback. Texts that only make sense to a
developer of this project are replaced by what an artist can do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..gendr_core.errors import CheckpointFormatError, GenDRPixError

logger = logging.getLogger(__name__)

NOT_A_MODEL = ("this file is not a GenDR-Pix model (its header has no GenDR-Pix metadata). Pick another file, "
               "or convert the file with the gendr-pix command line tool (README, 'Getting weights')")


def artist_text(exc: BaseException) -> str:
    """The message of ``exc`` without hints meant for developers of this project."""
    text = str(exc)
    if isinstance(exc, CheckpointFormatError) and "not a GenDR-Pix model file" in text:
        name = text.split(": no '", 1)[0]
        return f"{name}: {NOT_A_MODEL}"
    if "has no learned FixMod" in text:  # the library's hint names a training script
        return text.split(" (no '", 1)[0] + ("; choose 'wavelet' or 'auto', or load a model file that has a "
                                            "learned FixMod")
    return text


@contextmanager
def node_errors(node: str) -> Iterator[None]:
    """Turn gendr_core errors and bad values raised inside into ``ValueError('<node>: ...')``."""
    try:
        yield
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{node}: {exc}") from exc
    except (GenDRPixError, ValueError) as exc:
        logger.debug("%s failed", node, exc_info=exc)
        raise ValueError(f"{node}: {artist_text(exc)}") from exc
