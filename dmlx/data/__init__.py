"""Datasets, splits, samplers and on-device augmentation."""
