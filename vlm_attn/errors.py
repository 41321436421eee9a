"""The exception type of user errors: bad flags, files or settings that the user can fix.

The command line prints these as one line (the message names the problem and the fix); everything else is a
failure of the program. ``UserError`` is a ValueError so that API callers catching ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a flag, a file, a setting); the message is one line naming the problem and the fix."""
