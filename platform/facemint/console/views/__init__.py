"""One module per console screen, each with its own `router`."""
