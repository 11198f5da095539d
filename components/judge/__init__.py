"""The judge stage: timing detectors (timing.py), grounded content judge backends (backends/),
the stage itself (logic.py) and its calibration against a hand-labelled set (calibration/)."""
