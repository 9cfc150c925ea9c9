"""Allow ``python -m northpole``."""

from northpole.cli.main import main

main()
