"""Kept so ``python eval_megaface.py ...``, and torchrun on it, keep working: the command is ``facerec-megaface``
(:mod:`facerec.cli.megaface`)."""
import sys

from facerec.cli.megaface import main

if __name__ == "__main__":
    sys.exit(main())
