"""Server side: the Flower ServerApp, the round driver, checkpoints, progress."""
