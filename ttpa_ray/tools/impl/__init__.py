"""Deterministic implementations of the bundled tools, one module per domain (travel has two:
``travel`` for places and stays, ``transport`` for flights and trains). Each module ends with
``SPECS``, the schemas and examples of its tools; ``ttpa_ray.tools.bundled`` collects them."""
