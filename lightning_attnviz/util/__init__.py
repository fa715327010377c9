"""Helpers every floor may use: argument checks, warn-once keys and the Lightning packages' classes."""
