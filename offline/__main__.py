"""`python -m offline ...` is the `magnet` CLI (and what torchrun launches: -m offline train ...)."""

from offline.cli import main

main()
