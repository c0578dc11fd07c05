"""Episodes built from trajectory files: state images, state vectors, actions and splits."""
