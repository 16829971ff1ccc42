"""Evaluation beyond clean accuracy: adversarial robustness, GAN and style metrics.

Kept free of imports so that ``import droplab.evaluate.X`` pulls in only what X needs.
"""
