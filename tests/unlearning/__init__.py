"""Tests of fedunlearn.unlearning."""
