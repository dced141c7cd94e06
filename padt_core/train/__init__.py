"""Training: collator, losses, the Hugging Face Trainer subclass."""
