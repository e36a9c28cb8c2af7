"""The two runtimes that run the same apps: Ray simulation and gRPC deployment."""
