"""Training scripts (run from a clone: ``python -m trainers.train_pixel --config ...``)."""
