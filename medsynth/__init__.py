"""medsynth: de-identified ingestion, 3D conditional generative models and privacy-aware synthesis
of medical images. The library never imports dvc and never reads params.yaml itself."""

__version__ = "0.1.0"
