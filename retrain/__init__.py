"""retrain stage."""
