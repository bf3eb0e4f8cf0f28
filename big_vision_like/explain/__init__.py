"""Explanations of a classifier's predictions: saliency, SmoothGrad,
Grad-CAM (ResNet/BiT) and attention rollout (ViT), see `methods.py`; PNG
overlays for a list of images and a checkpoint, see `command.py`:

  python -m big_vision_like.explain --config=configs/demo.py \\
      --workdir=workdirs/demo --inputs=a.png,b.png --method=rollout \\
      --output=explanations/
"""
