"""Offline training: fit the CIFAR-10 CNN and the Iris MLP, export them as SavedModels."""
