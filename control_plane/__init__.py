"""VisionGuard control plane: the `visionguard` CLI, Triton process management, promotion."""
