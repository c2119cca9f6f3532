"""The device lab: an inventory of devices reached over SSH, deploys checked by sha256, remote benches."""
