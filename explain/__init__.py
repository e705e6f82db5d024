"""See what the model sees: Grad-CAM maps through a run's backbone + head, and frame thumbnails on cluster maps.

Importing this package is cheap (no torch, no grad-cam, no OpenCV): cli.py reads `METHODS` from here to build its
choices. The work lives in `explain.model` (backbone + head as one differentiable model), `explain.cam` (maps with
pytorch-grad-cam), `explain.render` (PNGs) and `explain.thumbnails` (re-decoded frames on a 2-D map).
"""
from featstore.errors import FramecacheError

# --method name -> pytorch_grad_cam class name (resolved when explaining, so the package stays optional)
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}
INSTALL_HINT = "explain needs the grad-cam package: pip install -e '.[explain]' (or pip install 'grad-cam>=1.5')"


class ExplainError(FramecacheError, ValueError):
    """An explain or thumbnail request that cannot be honoured; the message says what to do instead."""


__all__ = ["INSTALL_HINT", "METHODS", "ExplainError"]
