import os
import sys

# tests import the independent references in tests/naive.py by name
sys.path.insert(0, os.path.dirname(__file__))
