"""Side-by-side benchmark of the service against Triton, LitServe, BentoML and Ray Serve."""
