"""The pure engine: image in, image out. No I/O beyond bytes, no configuration, no global state."""
