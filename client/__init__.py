"""Client side: the Flower ClientApp and what a node knows about itself."""
