"""Layer 4: images from a teacher's BatchNorm statistics (DeepInversion)."""
