"""Metrics: segmentation Dice, parameter accounting."""
