"""The admin's web page."""
