"""Booking watch, reminder schedule and confirm/cancel handling."""
