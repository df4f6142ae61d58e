"""Kept so ``python visualize_masks.py ...``, and torchrun on it, keep working: the command is ``facerec-masks``
(:mod:`facerec.cli.masks`)."""
import sys

from facerec.cli.masks import main

if __name__ == "__main__":
    sys.exit(main())
