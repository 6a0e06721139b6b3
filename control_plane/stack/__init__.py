"""The embedded stack on one machine: the environment bootstrap (`python3 -m control_plane`),
`visionguard up`, the supervisor of its processes, and the Triton process.

May import the wings (`up` serves the registered champion, training the bootstrap detector) and
everything below them; no wing imports it. `environment.py` uses the standard library only, since
it runs before the virtual environment exists: keep this `__init__` free of imports.
"""
