"""Host CTR models (AvgPoolDNN, DIN, SIM, TWIN) with a pluggable fusion slot."""
