"""The console scripts (``[project.scripts]`` in pyproject.toml): argv parsing and printed results.

One module per command, each with ``main(argv=None) -> int`` and runnable as ``python -m facerec.cli.<name>``:
``train``, ``megaface``, ``masks``, ``verify``, ``export``, ``align``, ``pack``, ``make_bin``, ``synthetic``,
``demo``, ``complexity`` (installed as ``facerec-<name>``, ``make_bin`` as ``facerec-make-bin``). This package sits on
top: it imports the library, and nothing in the library imports it (checked by ``lint-imports``).
"""

__all__: list = []
