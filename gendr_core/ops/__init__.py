"""Pure tensor operations (no state, no learnable parameters)."""
