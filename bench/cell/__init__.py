"""One cell: the recipe (setup -> train -> evaluate), the training loop and its parts, and the
instruments that measure it."""
