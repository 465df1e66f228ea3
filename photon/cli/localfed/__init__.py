"""`photon local`: a complete federation on one machine (certificates, data, processes)."""
