"""Fine-tuning with paddlenlp.Trainer: arguments, objectives, the Trainer subclass and the run entry point."""
