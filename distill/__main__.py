"""``python -m distill`` runs the command line."""

from distill.cli import main

main()
