"""The trainer's one error type for bad input (printed as one line by ``cones``)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input found before any heavy work: a folder with no images, a model folder
    missing parts, a layer pattern that matches nothing, conflicting options...

    >>> try: trainer.train_concept(model="sd15", images="empty/", ...)
    ... except trainer.UsageError as error: print(error)
    empty/: no images (looked for .png, .jpg, .jpeg, .webp, .bmp)
    """
