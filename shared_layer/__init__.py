"""Stratus's shared layer: imported by every function, importing none.

Modules are imported on first use (`from shared_layer import auth`); this package's own
import does nothing heavy, so a function pays only for what it uses.
"""
