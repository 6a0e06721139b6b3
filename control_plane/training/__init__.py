"""Training: generated datasets (shapes, image shifts), the offline bootstrap detector trained
with Ultralytics and logged to MLflow, and evaluation.

May import the MLflow store, errors, settings and `export`; never another wing.
"""
