"""Models and the training script of the end-to-end benchmark against DeepSpeed's autotuner."""
