#!/usr/bin/env python3
"""Distil a timm teacher into a timm student with R2KD, or train a model as timm's train.py does.

    python train_r2kd.py --model resnet18 --teacher resnet50 --r2kd --data-dir /data/imagenet

See docs/usage.md; every flag of timm's train.py works here with the same meaning.
"""
from timm_r2kd.train import main

if __name__ == '__main__':
    main()
