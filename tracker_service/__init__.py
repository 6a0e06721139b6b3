"""VisionGuard gateway: decode, letterbox, Triton, tracking per stream."""
