"""The data quality gate before training: Great Expectations suites over the chain's tables."""
