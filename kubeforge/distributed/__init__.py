"""Distributed training: the torchrun worker, Kubeflow Trainer TrainJob / PyTorchJob objects, and their launcher.

The worker and the job renderer are plain Python; only the launcher talks to a Kubernetes API server.
"""
