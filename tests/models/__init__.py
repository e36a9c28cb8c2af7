"""Tests of fedunlearn.models."""
