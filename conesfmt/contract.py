"""What the conformance kit asks of a command-line reader (docs/conformance.md), torch- and hypothesis-free.

A reader is run once per input file: it prints the decoded form of spec § 12
on stdout and exits 0 to accept, or exits :data:`REJECT_STATUS` to reject (or
to refuse at one of its reader limits, spec § 8.2). Any other status, a death
by signal, a sanitizer report on stderr, or a run past :data:`DECODE_SECONDS`
is a failure. ``cones dump`` keeps this contract.

>>> from conesfmt.contract import REJECT_STATUS, DECODE_SECONDS
>>> REJECT_STATUS, DECODE_SECONDS
(1, 5.0)
"""

from __future__ import annotations

#: The exit status of a reader that rejects a file. 0 accepts; any other status is a
#: failure, so a reader that crashes on bad input cannot pass for one that rejects it.
REJECT_STATUS = 1
#: Seconds one input may take: this library's own limit per decode, and the default
#: for an external reader, its process start included (``cones conformance --timeout``).
DECODE_SECONDS = 5.0
