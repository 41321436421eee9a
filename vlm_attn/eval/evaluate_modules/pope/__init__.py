"""evaluate module folder for POPE (the script is pope.py)."""
