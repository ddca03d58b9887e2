"""styleme3d-ns: stylised 3D Gaussian Splatting methods for nerfstudio.

The package by floor (a module imports only from its own floor or below; tests/test_layers.py holds it):

- `core/`: errors, atomic writes, safe torch loading, config defaults (imports nothing of ours);
- `render/`: the rasteriser and colour maps; `guidance/`: one loss expert per file and the packaged networks;
  `data/`: scenes, data parsers, style images;
- `models/`: the shared model layer and one model per method; `eval/`: metrics and sheets;
- `engine/` (the trainer) and `method_configs/` (one nerfstudio MethodSpecification per method);
- `apps/` and `batch/`: the command-line programs (demos, export, viewer, the batch grid).
"""

from styleme3d_ns.core import moved

moved.install()  # 0.1.0 module paths (in old config.yml files) still import

__version__ = "0.1.0"
