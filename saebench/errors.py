"""The one exception type users see.

Every problem a user can fix (bad file, wrong hook, missing package, unwritable folder) is raised
as :class:`SaebenchError` with a one-line message that names the problem and the fix. The CLI
prints it as ``error: ...`` and exits with status 2; it never prints a traceback for these.
"""

from __future__ import annotations


class SaebenchError(Exception):
    """A user-fixable problem, with a one-line message naming the problem and the fix."""
