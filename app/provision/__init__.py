"""Connecting a real portal: `leadloop setup` creates, `leadloop doctor` checks."""
