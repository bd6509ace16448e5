import os

# Quiet progress bars in tests.
os.environ.setdefault("CALOFORGE_NO_PROGRESS", "1")
