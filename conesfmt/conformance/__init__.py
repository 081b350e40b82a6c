"""A hypothesis conformance kit for ``.cones`` readers (needs ``hypothesis``).

- :mod:`.strategies`: valid containers, edge cases included;
- :mod:`.mutations`: blind and structure-aware mutations of valid files;
- :mod:`.properties`: round trip, canonical bytes, and "every mutation is a
  valid container or rejected, never a crash, a hang or a huge allocation",
  against this library or an external reader (differentially).

Run it against another implementation from the shell:

    cones conformance --reader "./my-reader {}" --examples 500

See ``docs/conformance.md``.
"""

from .mutations import mutations
from .properties import CommandReader, ConformanceFailure, LibraryReader, run
from .strategies import containers

__all__ = ["CommandReader", "ConformanceFailure", "LibraryReader", "containers", "mutations", "run"]
