"""Kept so ``python train_face.py ...``, and torchrun on it, keep working: the command is ``facerec-train``
(:mod:`facerec.cli.train`)."""
import sys

from facerec.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
