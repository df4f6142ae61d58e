"""The one-command demo: synthetic faces -> DRConv-MobileFaceNet -> verification -> MegaFace -> masks."""
import sys

__all__ = ["main"]


def main() -> int:
    print("facerec demo: not built yet (see the open issues); the library parts are importable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
