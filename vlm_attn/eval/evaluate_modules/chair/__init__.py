"""evaluate module folder for CHAIR (the script is chair.py)."""
