"""Export trained models for the Geant4 fast-simulation hooks (DDML, Par04): ONNX or
TorchScript samplers with their contract in the file and in ``FILE.export.md``.

>>> from caloforge.export import CONVENTIONS, FORMATS
>>> FORMATS
('onnx', 'torchscript')
"""

from caloforge.export.api import CONVENTIONS, FORMATS, describe, export_model  # noqa: F401
from caloforge.export.graph import ExportError, VoxelSampler, shower_normals  # noqa: F401
