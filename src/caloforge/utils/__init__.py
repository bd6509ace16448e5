"""Small shared helpers: progress bars, atomic file writes, seeding."""

from caloforge.utils.atomic import atomic_path, check_output_path
from caloforge.utils.progress import progress

__all__ = ["atomic_path", "check_output_path", "progress"]
