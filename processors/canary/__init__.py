"""Versions of an agent live at once: routing rules (canaries), their statistics per
version, and the watcher that rolls a failing candidate back."""
