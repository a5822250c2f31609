"""ajuste: fine-tune or train from scratch? Answered with evidence."""

__version__ = "0.1.0"
