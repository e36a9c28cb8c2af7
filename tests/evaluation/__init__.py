"""Tests of fedunlearn.evaluation (a package, so its test modules do not clash with others)."""
