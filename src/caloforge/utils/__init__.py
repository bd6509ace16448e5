"""Small shared helpers: progress bars, atomic file writes, device and system-error checks."""

from caloforge.utils.atomic import atomic_dir, atomic_path, check_output_path
from caloforge.utils.device import resolve_device
from caloforge.utils.progress import progress

__all__ = ["atomic_dir", "atomic_path", "check_output_path", "progress", "resolve_device"]
