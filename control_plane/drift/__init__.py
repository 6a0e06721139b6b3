"""Drift: the live window of gateway features against the champion's reference window
(alibi-detect KS and MMD), retraining requests, the drift report, routes and commands.

May import `training` (to rebuild evaluation data and retrain), the MLflow store, errors,
settings and the gateway's shared modules (drift features, NMS, letterbox); never `releases`,
`logs`, `stack` or `api`.
"""
