"""styleme3d-ns: stylised 3D Gaussian Splatting methods for nerfstudio."""

__version__ = "0.1.0"
