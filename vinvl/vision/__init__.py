"""The image side: the VinVL object-attribute detector and extraction of its features from photos."""
