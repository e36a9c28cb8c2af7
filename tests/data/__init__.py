"""Tests of fedunlearn.data (a package, so its test modules do not clash with tests/models/)."""
