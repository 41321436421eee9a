"""Imports every method file so that each registers itself."""

from . import var  # noqa: F401
from . import pai, paint  # noqa: F401
from . import funnel, vicrop  # noqa: F401
from . import dola, icd, m3id, only, vcd, vista  # noqa: F401
