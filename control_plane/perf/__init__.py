"""Performance: perf_analyzer against the served model (the latency gate uses it too).

May import errors, settings and the gateway's letterbox; never a wing.
"""
