"""Calibration of the content judge against a hand-labelled set (calibrate.py)."""
