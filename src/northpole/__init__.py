"""northpole: Santa's distributed gift management system.

The package is split into one subpackage per part (``idgen``, later ``tasks``,
``exchange``, ...) and a shared ``core`` that none of the parts depend on each
other through.
"""

__version__ = "0.1.0"
