"""`python -m tuner.cli`."""

from . import main

main()
