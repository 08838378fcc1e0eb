"""ImageNet channel statistics: what ImageNet-trained encoders (and the patch CNNs trained on raw
patches) expect RGB in [0, 1] to be normalised with."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
