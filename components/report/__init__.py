"""The report stage: the preference data of a run as one self-contained HTML page."""
