"""CIFAR architectures of the knowledge-distillation literature, registered with timm."""
from .cifar_resnet import CifarResNet, WideResNet
from .cifar_vgg import CifarVGG
from .cifar_mobile import CifarMobileNetV2, CifarShuffleNetV1, CifarShuffleNetV2
from .convert import convert_kd_checkpoint, unwrap_checkpoint
