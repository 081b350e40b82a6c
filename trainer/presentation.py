"""How the trainer shows itself: progress bars for a terminal or a log, quiet libraries, figure labels.

>>> quiet_libraries()   # no loading bars or advice from transformers and diffusers
>>> bar = progress_bar(total=100, desc="xi-descent", unit="step")
"""

from __future__ import annotations

import sys
from functools import cache

from tqdm.auto import tqdm

#: Seconds between redraws when the output is not a terminal (a log file, CI): a line now and then.
LOG_INTERVAL = 30.0


def quiet_libraries() -> None:
    """Silence transformers' and diffusers' loading bars and advice (a run prints only its own lines).

    Errors still show. Called by the ``cones`` commands, not on import: a
    library user keeps their own logging settings.
    """
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def progress_bar(*, enabled: bool = True, **options) -> tqdm:
    """A tqdm bar with rate and ETA; redrawn at most every ``LOG_INTERVAL`` s when stderr is no terminal."""
    interactive = sys.stderr.isatty()
    options.setdefault("mininterval", 0.1 if interactive else LOG_INTERVAL)
    options.setdefault("dynamic_ncols", interactive)
    return tqdm(disable=not enabled, **options)


@cache
def label_font(size: int = 13):
    """The font figure labels use (Pillow's own, at a size where its spaces keep their width)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)
