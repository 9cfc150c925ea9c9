"""The ``northpole`` command line."""
