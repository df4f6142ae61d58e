"""Command lines of the library's ``python -m`` entry points.

Each library module with a ``python -m`` entry (``facerec.data.align``, ``.pack``, ``.synthetic``,
``.verification``, ``facerec.models.complexity``, ``facerec.demo``) keeps a two-line ``main`` that
delegates here, so the library itself neither parses argv nor prints.
"""

__all__: list = []
