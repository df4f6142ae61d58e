"""Fixed colour-blind-safe palette for guided-mask region maps (up to 16 regions).

A region index ``j`` of a DRConv guided mask (paper section 3.2, Eq. 4: ``M = argmax_j F_j``) is always
drawn in ``PALETTE[j]``, in every figure, so region colours can be compared across layers and faces.

Sources of the colours:

* Regions 0-7: the 8 colours of Okabe & Ito, "Color Universal Design (CUD): how to make figures and
  presentations that are friendly to colorblind people" (2002/2008, https://jfly.uni-koeln.de/color/),
  in their published order except that black moves from first to last (over a face, black reads as
  "dark", so it should go to the least used index). These 8 stay distinct for deuteranopes,
  protanopes and tritanopes. DRConv-MobileFaceNet uses m = 8 regions, so every region of the default
  model gets one of these.
* Regions 8-15: Paul Tol's "muted" qualitative scheme (P. Tol, "Colour schemes", SRON technical note
  SRON/EPS/TN/09-002, https://personal.sron.nl/~pault/), its colours indigo, wine, olive, rose, green,
  teal, sand and purple (cyan and pale grey are left out: they sit closest to Okabe-Ito's sky blue and
  to a face's background). Within itself the muted scheme is colour-blind safe; across the two halves a
  few pairs (e.g. Tol sand / Okabe-Ito yellow) are close for some readers, which no 16-colour qualitative
  palette avoids. Layers with more than 8 regions should therefore be read with the legend.
"""
import numpy as np

from facerec._quote import quote

__all__ = ["PALETTE", "PALETTE_HEX", "PALETTE_NAMES", "MAX_REGIONS", "palette_rgb"]

_COLOURS = (
    ("#E69F00", "orange (Okabe-Ito)"),
    ("#56B4E9", "sky blue (Okabe-Ito)"),
    ("#009E73", "bluish green (Okabe-Ito)"),
    ("#F0E442", "yellow (Okabe-Ito)"),
    ("#0072B2", "blue (Okabe-Ito)"),
    ("#D55E00", "vermillion (Okabe-Ito)"),
    ("#CC79A7", "reddish purple (Okabe-Ito)"),
    ("#000000", "black (Okabe-Ito)"),
    ("#332288", "indigo (Tol muted)"),
    ("#882255", "wine (Tol muted)"),
    ("#999933", "olive (Tol muted)"),
    ("#CC6677", "rose (Tol muted)"),
    ("#117733", "green (Tol muted)"),
    ("#44AA99", "teal (Tol muted)"),
    ("#DDCC77", "sand (Tol muted)"),
    ("#AA4499", "purple (Tol muted)"),
)

PALETTE_HEX: tuple[str, ...] = tuple(c for c, _ in _COLOURS)
PALETTE_NAMES: tuple[str, ...] = tuple(n for _, n in _COLOURS)
MAX_REGIONS: int = len(_COLOURS)
PALETTE: np.ndarray = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE_HEX], dtype=np.uint8)
PALETTE.setflags(write=False)


def palette_rgb(regions: int) -> np.ndarray:
    """Colours of regions ``0 .. regions-1``.

    Args:
        regions: number of regions m, 1 <= m <= 16.

    Returns:
        uint8 array (m, 3), RGB.

    Raises:
        ValueError: m outside 1..16 (the palette has 16 colours).
    """
    if isinstance(regions, bool) or not isinstance(regions, (int, np.integer)):
        raise TypeError(f"regions must be an int, got {type(regions).__name__} {quote(regions)}")
    if not 1 <= regions <= MAX_REGIONS:
        raise ValueError(f"regions must be in 1..{MAX_REGIONS} (the palette has {MAX_REGIONS} colours), got {regions}")
    return PALETTE[:regions]
