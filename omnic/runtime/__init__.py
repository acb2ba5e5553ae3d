"""Running models: the PyTorch reference runner and the greedy loop every runner shares."""
