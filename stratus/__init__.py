"""Developer tooling for Stratus: the local stack, the demo and the `stratus` command.

Nothing here is deployed: a function bundle holds `shared_layer/` and its own `main.py` only.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
