"""padt's built-in plugins (backbones, decoders, datasets, ...), registered through entry points."""
