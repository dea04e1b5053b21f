"""Generation: C* from a frozen ContextBlock, and text from a trained model (generate, score, probe features, export)."""
