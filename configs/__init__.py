"""Default settings shipped with tuner (``default.toml``); read by :mod:`tuner.config`."""
