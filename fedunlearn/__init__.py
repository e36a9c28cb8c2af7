"""Federated unlearning on Flower: NoT, TIS, ascent baselines and Retrain, measured."""
