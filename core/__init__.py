"""What the bridge, the panel and the jobs share: models, services and clients of the outside world."""
