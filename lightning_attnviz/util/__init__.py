"""Helpers every floor may use: argument checks and the Lightning packages' classes."""
