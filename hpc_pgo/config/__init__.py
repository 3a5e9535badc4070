"""Configuration: compose base.yaml, config groups and key=value overrides; validate; parse fold ranges."""
