"""Generative models (conditional GAN, conditional VAE, VAE-GAN), their Lightning training and registry."""
