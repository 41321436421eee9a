"""Imports every method file so that each registers itself."""

from . import var  # noqa: F401
from . import pai, paint  # noqa: F401
from . import funnel, vicrop  # noqa: F401
from . import icd, m3id, vcd  # noqa: F401
