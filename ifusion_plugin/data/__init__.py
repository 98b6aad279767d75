"""Data sources, the Arrow cache and the LightningDataModule."""
